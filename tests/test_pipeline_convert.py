"""A whole Stable Video Diffusion pipeline folder -> one sfv-jax checkpoint -> a pipeline folder diffusers loads.

A tiny random diffusers StableVideoDiffusionPipeline (tiny UNet, VAE and CLIP image encoder, SVD-XT's
scheduler and feature extractor configs) goes through `sfv-jax convert` and `sfv-jax export`; every
tensor must come back bit-exact. Bad folders must fail with one line naming the culprit and leave
nothing on disk.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder as TorchVAE
from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline
from safetensors.numpy import load_file
from transformers import CLIPImageProcessor
from transformers import CLIPVisionConfig as TorchCLIPConfig
from transformers import CLIPVisionModelWithProjection as TorchCLIP

from sfv_jax.checkpoint import load_checkpoint, read_index
from sfv_jax.cli import main
from sfv_jax.convert.components import COMPONENTS, PIPELINE_COMPONENTS
from sfv_jax.convert.rulebook import flax_key_for, to_flax_layout
from sfv_jax.convert.weight_files import TensorSource, weight_paths
from sfv_jax.models.nnx_state import flat_params
from tests.reference import DATA, randomize_
from tests.unet_reference import tiny_torch_unet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The CLIP projection feeds the UNet's cross-attention: projection_dim == cross_attention_dim.
TINY_CLIP = dict(hidden_size=64, intermediate_size=128, projection_dim=32, num_hidden_layers=2, num_attention_heads=4,
                 patch_size=14, image_size=224, hidden_act="gelu")
TINY_VAE = dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, layers_per_block=2,
                latent_channels=4, in_channels=3, out_channels=3)
CONFIG_FILES = ("scheduler/scheduler_config.json", "feature_extractor/preprocessor_config.json")


def tiny_torch_pipeline() -> StableVideoDiffusionPipeline:
    unet = tiny_torch_unet(0, cross_attention_dim=TINY_CLIP["projection_dim"])
    torch.manual_seed(1)
    vae = TorchVAE(**TINY_VAE).eval()
    randomize_(vae, 1)
    torch.manual_seed(2)
    image_encoder = TorchCLIP(TorchCLIPConfig(**TINY_CLIP)).eval()
    randomize_(image_encoder, 2)
    return StableVideoDiffusionPipeline(
        vae=vae, image_encoder=image_encoder, unet=unet,
        scheduler=EulerDiscreteScheduler.from_pretrained(os.path.join(DATA, "scheduler")),
        feature_extractor=CLIPImageProcessor.from_pretrained(os.path.join(DATA, "feature_extractor")))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{"plain", "sharded", "fp16"}: the same tiny pipeline saved three ways."""
    root = tmp_path_factory.mktemp("pipelines")
    pipe = tiny_torch_pipeline()
    out = {"plain": str(root / "plain"), "sharded": str(root / "sharded"), "fp16": str(root / "fp16")}
    pipe.save_pretrained(out["plain"])
    pipe.save_pretrained(out["sharded"], max_shard_size="100KB")
    pipe.to(torch.float16).save_pretrained(out["fp16"], variant="fp16")
    return out


@pytest.fixture(scope="module")
def checkpoint(folders, tmp_path_factory):
    ckpt = str(tmp_path_factory.mktemp("ckpt") / "svd")
    assert main(["convert", "--diffusers", folders["plain"], "--out", ckpt]) == 0
    return ckpt


def source_tensors(folder: str, name: str, variant: str | None = None) -> dict[str, np.ndarray]:
    component = COMPONENTS[PIPELINE_COMPONENTS[name]]
    source = TensorSource(weight_paths(os.path.join(folder, name), component.weights_name, variant))
    return {key: np.asarray(source.get(key)) for key in source.keys()}


def stored_params(ckpt: str) -> dict[str, dict[str, np.ndarray]]:
    """The params tree as stored in CKPT/params, read back as numpy (no model build)."""
    import jax
    import orbax.checkpoint as ocp
    path = os.path.join(ckpt, "params")
    metadata = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
    return ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))


def assert_params_match_source(modules, folder: str, variant: str | None = None) -> None:
    """Every parameter (restored modules, or a stored tree) equals its source tensor moved through the
    rules, cast to float32."""
    assert set(modules) == set(PIPELINE_COMPONENTS)
    for name, module in modules.items():
        rules = COMPONENTS[PIPELINE_COMPONENTS[name]].rules
        params = module if isinstance(module, dict) else flat_params(module)
        params = {k: np.asarray(v) for k, v in params.items()}
        seen = set()
        for key, tensor in source_tensors(folder, name, variant).items():
            flax_key, layout = flax_key_for(rules, key)
            expected = to_flax_layout(tensor, layout).astype(np.float32)
            assert params[flax_key].dtype == np.float32, (name, flax_key)
            np.testing.assert_array_equal(params[flax_key], expected, err_msg=f"{name}: {key}")
            seen.add(flax_key)
        assert seen == set(params), f"{name}: parameters without a source tensor: {set(params) - seen}"


def test_convert_pipeline_into_one_checkpoint(folders, checkpoint):
    index = read_index(checkpoint)
    assert {n: c["class"] for n, c in index["components"].items()} == PIPELINE_COMPONENTS
    pipeline = index["extra"]["pipeline"]
    with open(os.path.join(folders["plain"], "model_index.json")) as f:
        assert pipeline["model_index"] == json.load(f)
    for relative in CONFIG_FILES:
        with open(os.path.join(folders["plain"], relative)) as f:
            assert pipeline["files"][relative] == json.load(f)
    assert sorted(os.listdir(checkpoint)) == ["params", "sfv_jax.json"]
    assert_params_match_source(load_checkpoint(checkpoint), folders["plain"])


def test_export_pipeline_is_bit_exact_and_loads_in_diffusers(folders, checkpoint, tmp_path, capsys):
    exported = str(tmp_path / "exported")
    assert main(["export", "--checkpoint", checkpoint, "--out", exported]) == 0
    for name, class_name in PIPELINE_COMPONENTS.items():
        weights = COMPONENTS[class_name].weights_name
        original = load_file(os.path.join(folders["plain"], name, f"{weights}.safetensors"))
        back = load_file(os.path.join(exported, name, f"{weights}.safetensors"))
        assert set(back) == set(original), name
        for key, value in original.items():
            assert back[key].dtype == value.dtype and np.array_equal(back[key], value), f"{name}: {key}"
    for relative in ("model_index.json", *CONFIG_FILES):
        with open(os.path.join(folders["plain"], relative)) as a, open(os.path.join(exported, relative)) as b:
            assert json.load(a) == json.load(b), relative
    pipe = StableVideoDiffusionPipeline.from_pretrained(exported)
    reference = StableVideoDiffusionPipeline.from_pretrained(folders["plain"])
    for name in PIPELINE_COMPONENTS:
        ours, theirs = getattr(pipe, name).state_dict(), getattr(reference, name).state_dict()
        assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs), name
    assert pipe.scheduler.config == reference.scheduler.config
    assert pipe.feature_extractor.to_dict() == reference.feature_extractor.to_dict()
    # An existing output is refused before any work.
    capsys.readouterr()
    assert main(["export", "--checkpoint", checkpoint, "--out", exported]) == 2
    assert "already exists" in capsys.readouterr().err


def test_single_component_folder_still_converts_and_exports(folders, tmp_path):
    """A vae/ folder alone, stored as bfloat16, exports back to a vae/ folder diffusers loads."""
    import ml_dtypes
    from orbax.checkpoint import StandardCheckpointer
    ckpt, exported = str(tmp_path / "vae_ckpt"), str(tmp_path / "vae_out")
    vae_folder = os.path.join(folders["plain"], "vae")
    assert main(["convert", "--diffusers", vae_folder, "--out", ckpt, "--dtype", "bfloat16"]) == 0
    index = read_index(ckpt)
    assert list(index["components"]) == ["vae"] and "pipeline" not in index["extra"]
    stored = StandardCheckpointer().metadata(os.path.join(ckpt, "params")).item_metadata.tree
    assert {m.dtype.name for m in stored["vae"].values()} == {"bfloat16"}
    assert main(["export", "--checkpoint", ckpt, "--out", exported]) == 0
    assert sorted(os.listdir(exported)) == ["config.json", "diffusion_pytorch_model.safetensors"]
    original = load_file(os.path.join(vae_folder, "diffusion_pytorch_model.safetensors"))
    back = load_file(os.path.join(exported, "diffusion_pytorch_model.safetensors"))
    assert set(back) == set(original)
    for key, value in original.items():  # float32 holding the bfloat16-rounded values
        np.testing.assert_array_equal(back[key], value.astype(ml_dtypes.bfloat16).astype(np.float32), err_msg=key)
    assert TorchVAE.from_pretrained(exported).config.block_out_channels == list(TINY_VAE["block_out_channels"])


def test_fp16_variant_converts(folders, tmp_path):
    ckpt = str(tmp_path / "fp16_ckpt")
    assert main(["convert", "--diffusers", folders["fp16"], "--variant", "fp16", "--out", ckpt]) == 0
    assert read_index(ckpt)["extra"]["variant"] == "fp16"
    assert all(v.dtype == np.float16 for v in source_tensors(folders["fp16"], "unet", "fp16").values())
    assert_params_match_source(stored_params(ckpt), folders["fp16"], "fp16")


def test_sharded_weights_convert(folders, tmp_path):
    assert len(os.listdir(os.path.join(folders["sharded"], "unet"))) > 3  # really sharded
    ckpt = str(tmp_path / "sharded_ckpt")
    assert main(["convert", "--diffusers", folders["sharded"], "--out", ckpt]) == 0
    assert_params_match_source(stored_params(ckpt), folders["plain"])


# ---- bad input: one line on stderr naming the culprit, exit code 2, nothing left on disk ----

def _broken_copy(folders, tmp_path, break_it) -> str:
    folder = str(tmp_path / "pipeline")
    shutil.copytree(folders["plain"], folder)
    break_it(folder)
    return folder


def _assert_fails_cleanly(argv, capsys, out: str, *named: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.endswith("\n") and err.count("\n") == 1, f"expected one line on stderr, got {err!r}"
    assert err.startswith(f"sfv-jax {argv[0]}: error: ") and "Traceback" not in err
    for name in named:
        assert name in err, f"{name!r} not named in {err!r}"
    assert not os.path.exists(out)
    parent = os.path.dirname(out)
    leftovers = [n for n in os.listdir(parent) if n.startswith(f".{os.path.basename(out)}")] if os.path.isdir(parent) else []
    assert leftovers == [], leftovers
    return err


def test_missing_component_folder(folders, tmp_path, capsys):
    folder = _broken_copy(folders, tmp_path, lambda f: shutil.rmtree(os.path.join(f, "vae")))
    out = str(tmp_path / "out" / "ckpt")
    _assert_fails_cleanly(["convert", "--diffusers", folder, "--out", out], capsys, out, os.path.join(folder, "vae"))


def test_component_of_the_wrong_class(folders, tmp_path, capsys):
    def vae_config_in_unet(f):
        shutil.copy(os.path.join(f, "vae", "config.json"), os.path.join(f, "unet", "config.json"))
    folder = _broken_copy(folders, tmp_path, vae_config_in_unet)
    out = str(tmp_path / "out" / "ckpt")
    err = _assert_fails_cleanly(["convert", "--diffusers", folder, "--out", out], capsys, out,
                                os.path.join(folder, "unet", "config.json"))
    assert "AutoencoderKLTemporalDecoder" in err and "UNetSpatioTemporalConditionModel" in err


def test_truncated_safetensors(folders, tmp_path, capsys):
    weights = os.path.join("image_encoder", "model.safetensors")

    def truncate(f):
        path = os.path.join(f, weights)
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) // 2)
    folder = _broken_copy(folders, tmp_path, truncate)
    out = str(tmp_path / "out" / "ckpt")
    err = _assert_fails_cleanly(["convert", "--diffusers", folder, "--out", out], capsys, out,
                                os.path.join(folder, weights))
    assert "truncated" in err


def test_missing_variant(folders, tmp_path, capsys):
    out = str(tmp_path / "ckpt")
    _assert_fails_cleanly(["convert", "--diffusers", folders["plain"], "--variant", "fp16", "--out", out], capsys, out,
                          os.path.join(folders["plain"], "unet"), "fp16")


def test_failed_export_leaves_nothing(checkpoint, tmp_path, capsys, monkeypatch):
    from sfv_jax.errors import CheckpointError
    clip = COMPONENTS["CLIPVisionModelWithProjection"]

    def disk_full(*args, **kwargs):
        raise CheckpointError("disk full")
    monkeypatch.setitem(COMPONENTS, clip.class_name, dataclasses.replace(clip, to_diffusers=disk_full))
    out = str(tmp_path / "exported")
    _assert_fails_cleanly(["export", "--checkpoint", checkpoint, "--out", out], capsys, out, "disk full")


def test_hf_repo_offline_names_the_repo(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there, should it try
    out = str(tmp_path / "ckpt")
    _assert_fails_cleanly(["convert", "--hf-repo", "someone/no-such-svd", "--variant", "fp16", "--out", out],
                          capsys, out, "someone/no-such-svd", "--diffusers")


# ---- restoring straight into a sharding ----

SHARDED_RESTORE = textwrap.dedent("""
    import sys
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from sfv_jax.checkpoint import load_checkpoint
    from sfv_jax.models.nnx_state import flat_params
    import orbax.checkpoint as ocp

    assert jax.device_count() == 8, jax.devices()
    mesh = jax.make_mesh((8,), ("fsdp",))
    requested = {}

    def sharding_for(component, key, shape):
        axes = [a for a, d in enumerate(shape.shape) if d % 8 == 0]
        spec = [None] * len(shape.shape)
        if shape.size >= 4096 and axes:  # big: shard its largest divisible axis
            spec[max(axes, key=lambda a: shape.shape[a])] = "fsdp"
        requested[component, key] = NamedSharding(mesh, P(*spec))
        return requested[component, key]

    sharded = load_checkpoint(sys.argv[1], sharding_for=sharding_for)
    path = sys.argv[1] + "/params"  # the unsharded values, read as numpy
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                ocp.StandardCheckpointer().metadata(path).item_metadata.tree)
    plain = ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    count = 0
    for name, module in sharded.items():
        reference = plain[name]
        for key, value in flat_params(module).items():
            assert value.sharding == requested[name, key], (name, key, value.sharding, requested[name, key])
            np.testing.assert_array_equal(np.asarray(value), np.asarray(reference[key]), err_msg=key)
            count += "fsdp" in requested[name, key].spec
    assert count > 50, count
    print("ok", len(requested), "params,", count, "sharded over fsdp")
""")


def test_restore_places_params_straight_into_a_sharding(checkpoint):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": ROOT}
    result = subprocess.run([sys.executable, "-c", SHARDED_RESTORE, checkpoint], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.startswith("ok"), result.stdout
