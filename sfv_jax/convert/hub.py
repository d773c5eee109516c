"""Downloading a diffusers pipeline from the Hugging Face hub (weights as safetensors only)."""

from __future__ import annotations

from sfv_jax.errors import CheckpointError


def download_pipeline(repo_id: str, revision: str | None = None, variant: str | None = None) -> str:
    """Downloads configs and safetensors weights of `repo_id`; returns the local folder."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError("--hf-repo needs huggingface_hub: pip install 'sfv-jax[reference]'") from None
    weights = f"*.{variant}.safetensors*" if variant else "*.safetensors*"
    try:
        return snapshot_download(repo_id, revision=revision,
                                 allow_patterns=["*.json", weights] + ([] if variant else ["*.safetensors.index.json"]),
                                 ignore_patterns=[] if variant else ["*.fp16.*"])
    except Exception as e:  # network, auth, missing repo: all end the same way for the user
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"cannot download {repo_id!r} from the Hugging Face hub ({reason}); check the repo id, "
                              f"your network and token (huggingface-cli login), or download it yourself and pass "
                              f"--diffusers DIR") from None
