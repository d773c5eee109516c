"""Parity of the Flax CLIP image encoder and SVD's CLIP preprocessing with transformers/diffusers."""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing
from safetensors.numpy import load_file, save_file
from transformers import CLIPImageProcessor
from transformers import CLIPVisionConfig as TorchCLIPConfig
from transformers import CLIPVisionModelWithProjection as TorchCLIP

from sfv_jax.convert import image_encoder_from_diffusers, image_encoder_to_diffusers
from sfv_jax.convert.clip_rules import CLIP_RULES
from sfv_jax.convert.engine import plan_import
from sfv_jax.convert.image_encoder import WEIGHTS_NAME, abstract_image_encoder
from sfv_jax.convert.rulebook import flax_key_for, flax_shape
from sfv_jax.convert.weight_files import TensorSource
from sfv_jax.errors import CheckpointError
from sfv_jax.models.nnx_state import flat_params
from tests.reference import channels_first as nchw
from tests.reference import channels_last as nhwc
from tests.reference import randomize_, rel_err
from sfv_jax.models import CLIPVisionConfig, ModelOptions
from sfv_jax.models.clip_preprocess import preprocess_for_clip

SVD_XT = os.path.join(os.path.dirname(__file__), "data", "svd-xt-configs")
TINY = dict(hidden_size=64, intermediate_size=128, projection_dim=48, num_hidden_layers=2, num_attention_heads=4,
            patch_size=14)
BOUND = 1e-5
PREPROCESS_BOUND = 1e-4  # max abs, on normalised pixels (about 4 units per [0, 1])








def save_tiny(folder: str, seed: int = 0, **overrides) -> TorchCLIP:
    torch.manual_seed(seed)
    model = TorchCLIP(TorchCLIPConfig(**{**TINY, **overrides})).eval()
    randomize_(model, seed + 1)
    model.save_pretrained(folder, safe_serialization=True)
    return model


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("image_encoder"))
    return folder, save_tiny(folder, hidden_act="gelu", image_size=224)


@pytest.fixture(scope="module")
def feature_extractor():
    return CLIPImageProcessor.from_pretrained(os.path.join(SVD_XT, "feature_extractor"))


@pytest.mark.parametrize("hidden_act,image_size", [("gelu", 224), ("quick_gelu", 70)])
def test_image_embeds_match_transformers(tmp_path, hidden_act, image_size):
    torch_clip = save_tiny(str(tmp_path), seed=3, hidden_act=hidden_act, image_size=image_size)
    clip = image_encoder_from_diffusers(str(tmp_path))
    pixels = torch.randn(3, 3, image_size, image_size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = torch_clip(pixel_values=pixels).image_embeds
    out = clip(nhwc(pixels))
    err = rel_err(out, ref)
    print(f"CLIP {hidden_act} {image_size}px, batch 3: image_embeds rel L2 {err:.2e} (bound {BOUND})")
    assert out.shape == (3, 48)
    assert err <= BOUND


def test_wrong_pixel_size_is_refused(clip_folder):
    clip = image_encoder_from_diffusers(clip_folder[0])
    with pytest.raises(ValueError, match="224"):
        clip(jnp.zeros((1, 112, 112, 3)))


def _pipeline_clip_input(image: PIL.Image.Image, feature_extractor) -> np.ndarray:
    """What StableVideoDiffusionPipeline._encode_image feeds its image encoder, as (1, 224, 224, 3)."""
    pixels = torch.from_numpy(np.asarray(image).astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    resized = (_resize_with_antialiasing(pixels * 2.0 - 1.0, (224, 224)) + 1.0) / 2.0
    out = feature_extractor(images=resized, do_normalize=True, do_center_crop=False, do_resize=False,
                            do_rescale=False, return_tensors="pt").pixel_values
    return out.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("width,height", [(97, 61), (1024, 576), (300, 701)])
def test_preprocessing_matches_the_pipeline(feature_extractor, width, height):
    # Upscaling (no blur), a 4.6x / 2.6x downscale (blur) and a tall odd image (different blur per axis).
    rng = np.random.default_rng(width)
    image = PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    ref = _pipeline_clip_input(image, feature_extractor)
    images = jnp.asarray(np.asarray(image).astype(np.float32)[None] / 255.0 * 2.0 - 1.0)
    out = preprocess_for_clip(images)
    jitted = jax.jit(preprocess_for_clip)(images)
    err = float(np.abs(np.asarray(out) - ref).max())
    print(f"CLIP preprocessing {width}x{height} -> 224: max abs {err:.2e} (bound {PREPROCESS_BOUND})")
    assert out.shape == (1, 224, 224, 3) and out.dtype == jnp.float32
    assert err <= PREPROCESS_BOUND
    np.testing.assert_allclose(jitted, out, atol=1e-6)


def test_pil_image_to_embedding_matches_the_pipeline(clip_folder, feature_extractor):
    folder, torch_clip = clip_folder
    clip = image_encoder_from_diffusers(folder)
    image = PIL.Image.fromarray(np.random.default_rng(5).integers(0, 256, (61, 97, 3), dtype=np.uint8))
    with torch.no_grad():
        ref = torch_clip(pixel_values=torch.from_numpy(_pipeline_clip_input(image, feature_extractor))
                         .permute(0, 3, 1, 2)).image_embeds
    images = jnp.asarray(np.asarray(image).astype(np.float32)[None] / 255.0 * 2.0 - 1.0)
    err = rel_err(clip(preprocess_for_clip(images)), ref)
    print(f"CLIP PIL 97x61 -> image_embeds end to end: rel L2 {err:.2e} (bound {BOUND})")
    assert err <= BOUND


def test_round_trip_is_bit_exact(clip_folder, tmp_path):
    folder, _ = clip_folder
    clip = image_encoder_from_diffusers(folder)
    out = str(tmp_path / "exported")
    image_encoder_to_diffusers(clip, out)
    original = load_file(os.path.join(folder, f"{WEIGHTS_NAME}.safetensors"))
    exported = load_file(os.path.join(out, f"{WEIGHTS_NAME}.safetensors"))
    assert sorted(exported) == sorted(original)
    for key, value in original.items():
        assert exported[key].dtype == value.dtype and np.array_equal(exported[key], value), key
    with open(os.path.join(folder, "config.json")) as f:
        source_config = json.load(f)
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f) == source_config  # the same file transformers writes
    reloaded, info = TorchCLIP.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_svd_xt_key_inventory_maps_one_to_one():
    """All 520 tensors of SVD-XT's image encoder map to distinct Flax parameters of the right shape."""
    with open(os.path.join(SVD_XT, "image_encoder", "config.json")) as f:
        model = abstract_image_encoder(CLIPVisionConfig.from_dict(json.load(f)), ModelOptions())
    inventory = {}
    with open(os.path.join(SVD_XT, "image_encoder", "state_dict_keys.tsv")) as f:
        for line in f:
            key, shape = line.rstrip("\n").split("\t")
            inventory[key] = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
    assert len(inventory) == 520
    mapped = {}
    for key, shape in inventory.items():
        flax_key, layout = flax_key_for(CLIP_RULES, key)
        assert flax_key in model.shapes, key
        assert flax_shape(shape, layout) == tuple(model.shapes[flax_key].shape), key
        mapped[flax_key] = key
    assert sorted(mapped) == sorted(model.shapes)


# ---- bad input -------------------------------------------------------------------------------------

def _copy_with_config(folder: str, dest, **changes) -> str:
    dest = str(dest)
    shutil.copytree(folder, dest)
    path = os.path.join(dest, "config.json")
    with open(path) as f:
        config = json.load(f)
    with open(path, "w") as f:
        json.dump({**config, **changes}, f)
    return dest


def test_missing_config_is_named(clip_folder, tmp_path):
    folder = _copy_with_config(clip_folder[0], tmp_path / "image_encoder")
    os.remove(os.path.join(folder, "config.json"))
    with pytest.raises(CheckpointError, match="config.json"):
        image_encoder_from_diffusers(folder)


def test_wrong_architecture_is_named(clip_folder, tmp_path):
    folder = _copy_with_config(clip_folder[0], tmp_path / "plain", architectures=["CLIPVisionModel"])
    with pytest.raises(CheckpointError, match="CLIPVisionModel.*not CLIPVisionModelWithProjection"):
        image_encoder_from_diffusers(folder)
    folder = _copy_with_config(clip_folder[0], tmp_path / "full", model_type="clip")
    with pytest.raises(CheckpointError, match="model_type 'clip'"):
        image_encoder_from_diffusers(folder)


def test_unsupported_config_is_named(clip_folder, tmp_path):
    folder = _copy_with_config(clip_folder[0], tmp_path / "key", use_qk_norm=True)
    with pytest.raises(CheckpointError, match="use_qk_norm"):
        image_encoder_from_diffusers(folder)
    folder = _copy_with_config(clip_folder[0], tmp_path / "act", hidden_act="silu")
    with pytest.raises(CheckpointError, match="hidden_act='silu'"):
        image_encoder_from_diffusers(folder)


def test_missing_tensor_is_named(clip_folder, tmp_path):
    folder = _copy_with_config(clip_folder[0], tmp_path / "image_encoder")
    path = os.path.join(folder, f"{WEIGHTS_NAME}.safetensors")
    tensors = load_file(path)
    del tensors["vision_model.embeddings.class_embedding"]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"1 missing tensor\(s\): vision_model.embeddings.class_embedding") as info:
        image_encoder_from_diffusers(folder)
    assert path in str(info.value)


# ---- full size (slow) ----------------------------------------------------------------------------

@pytest.mark.slow
def test_svd_xt_image_encoder_with_random_weights(tmp_path):
    folder = str(tmp_path / "image_encoder")
    with open(os.path.join(SVD_XT, "image_encoder", "config.json")) as f:
        config = {k: v for k, v in json.load(f).items() if k not in ("architectures", "model_type",
                                                                     "transformers_version")}
    torch.manual_seed(0)
    torch_clip = TorchCLIP(TorchCLIPConfig(**config)).eval()
    randomize_(torch_clip, 1)
    with open(os.path.join(SVD_XT, "image_encoder", "state_dict_keys.tsv")) as f:
        assert sorted(torch_clip.state_dict()) == sorted(line.split("\t")[0] for line in f)
    torch_clip.save_pretrained(folder, safe_serialization=True)

    clip = image_encoder_from_diffusers(folder)
    source = TensorSource([os.path.join(folder, f"{WEIGHTS_NAME}.safetensors")])
    assert len(plan_import(source, CLIP_RULES, abstract_image_encoder(clip.config, ModelOptions()).shapes,
                           "CLIP")) == 520
    assert len(flat_params(clip)) == 520

    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = torch_clip(pixel_values=pixels).image_embeds
    del torch_clip
    out = clip(nhwc(pixels))
    err = rel_err(out, ref)
    print(f"SVD-XT CLIP ViT-H/14: image_embeds rel L2 {err:.2e} (bound {BOUND})")
    assert out.shape == (1, 1024)
    assert err <= BOUND
