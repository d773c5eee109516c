"""Downloading a diffusers pipeline from the Hugging Face hub (weights as safetensors only)."""

from __future__ import annotations

from sfv_jax.errors import CheckpointError

MODEL_FOLDERS = ("unet", "vae", "image_encoder")
CONFIG_FOLDERS = ("scheduler", "feature_extractor")


def allow_patterns(variant: str | None = None) -> list[str]:
    """The files of a diffusers SVD pipeline that sfv-jax reads: configs and the component safetensors.

    Restricted to the component folders: SVD repos also hold multi-GB original (non-diffusers)
    checkpoints at their root, which sfv-jax does not read.
    """
    patterns = ["model_index.json"] + [f"{name}/*.json" for name in MODEL_FOLDERS + CONFIG_FOLDERS]
    for name in MODEL_FOLDERS:
        # diffusers names variant files model.fp16.safetensors and, sharded, model.fp16-00001-of-00002.safetensors
        patterns.append(f"{name}/*.{variant}*.safetensors" if variant else f"{name}/*.safetensors")
    return patterns


def download_pipeline(repo_id: str, revision: str | None = None, variant: str | None = None) -> str:
    """Downloads configs and safetensors weights of `repo_id`; returns the local folder."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError("--hf-repo needs huggingface_hub: pip install 'sfv-jax[reference]'") from None
    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns(variant),
                                 ignore_patterns=[] if variant else ["*.fp16.*", "*.fp16-*"])
    except Exception as e:  # network, auth, missing repo: all end the same way for the user
        reason = " ".join(str(e).split()) if str(e) else type(e).__name__
        if len(reason) > 300:
            reason = reason[:300] + "..."
        raise CheckpointError(f"cannot download {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {reason}); "
                              f"check the repo id, your network and token (hf auth login), or download the "
                              f"pipeline folder yourself and pass --diffusers DIR") from None
