"""Parity of the Flax AutoencoderKLTemporalDecoder with diffusers, through the real converter."""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder as TorchVAE
from flax import nnx
from safetensors.numpy import load_file, save_file

from sfv_jax.convert import vae_from_diffusers, vae_to_diffusers
from sfv_jax.convert.engine import plan_import
from sfv_jax.convert.rulebook import flax_key_for, flax_shape
from sfv_jax.convert.vae import WEIGHTS_NAME, abstract_vae
from sfv_jax.convert.vae_rules import VAE_RULES
from sfv_jax.convert.weight_files import TensorSource
from sfv_jax.errors import CheckpointError
from sfv_jax.models.nnx_state import flat_params
from tests.reference import channels_first as nchw
from tests.reference import channels_last as nhwc
from tests.reference import randomize_, rel_err
from sfv_jax.models import ModelOptions, VAEConfig

SVD_XT = os.path.join(os.path.dirname(__file__), "data", "svd-xt-configs", "vae")
# Two blocks cover every block kind (with and without down/upsampling); layers_per_block=2 makes the
# decoder's mid-block attention run (diffusers skips it with 1).
TINY = dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, layers_per_block=2,
            latent_channels=4, in_channels=3, out_channels=3)
BOUND = 1e-5










def pipeline_decode(vae: TorchVAE, latents: torch.Tensor, decode_chunk_size: int) -> torch.Tensor:
    """The chunk loop of diffusers' StableVideoDiffusionPipeline.decode_latents, on flattened unscaled latents."""
    frames = []
    for i in range(0, latents.shape[0], decode_chunk_size):
        chunk = latents[i:i + decode_chunk_size]
        frames.append(vae.decode(chunk, num_frames=chunk.shape[0]).sample)
    return torch.cat(frames, dim=0)


@pytest.fixture(scope="module")
def torch_vae():
    torch.manual_seed(0)
    vae = TorchVAE(**TINY).eval()
    randomize_(vae, 1)
    return vae


@pytest.fixture(scope="module")
def vae_folder(torch_vae, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("vae"))
    torch_vae.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def vae(vae_folder):
    return vae_from_diffusers(vae_folder)


def test_encode_matches_diffusers(torch_vae, vae):
    # Odd, non-square sizes that are not multiples of 8: the (0, 1) padding of the downsamplers shows.
    x = torch.rand(2, 3, 37, 50, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        dist = torch_vae.encode(x).latent_dist
    mean, logvar = vae.latent_dist(nhwc(x))
    err_mean, err_logvar = rel_err(nchw(mean), dist.mode()), rel_err(nchw(logvar), dist.logvar)
    err_encode = rel_err(nchw(vae.encode(nhwc(x))), dist.mode())
    print(f"VAE encode 37x50: mean rel L2 {err_mean:.2e}, logvar {err_logvar:.2e}, encode() {err_encode:.2e} "
          f"(bound {BOUND})")
    assert mean.shape == (2, 18, 25, 4)
    assert max(err_mean, err_logvar, err_encode) <= BOUND


def test_sample_draws_from_the_posterior(vae):
    x = jax.random.uniform(jax.random.key(3), (2, 37, 50, 3), minval=-1, maxval=1)  # shape of the test above
    mean, logvar = vae.latent_dist(x)
    key = jax.random.key(4)
    expected = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
    np.testing.assert_allclose(vae.sample(x, key), expected, rtol=1e-6, atol=1e-6)
    assert not np.allclose(vae.sample(x, jax.random.key(5)), expected)


def test_decode_one_clip_matches_diffusers(torch_vae, vae):
    # 5 frames (not the config default), a 9x7 latent (odd, non-square).
    z = torch.randn(5, 4, 9, 7, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = torch_vae.decode(z, num_frames=5).sample
    out = vae.decode(nhwc(z), num_frames=5)
    same_chunk = vae.decode(nhwc(z), num_frames=5, decode_chunk_size=5)
    err, err_chunk = rel_err(nchw(out), ref), rel_err(nchw(same_chunk), ref)
    print(f"VAE decode 5 frames 9x7 in one chunk: rel L2 {err:.2e}, with decode_chunk_size=5 {err_chunk:.2e} "
          f"(bound {BOUND})")
    assert out.shape == (5, 18, 14, 3)
    assert max(err, err_chunk) <= BOUND


def test_decode_two_clips_matches_diffusers(torch_vae, vae):
    # B=2 clips of 3 frames: each clip is decoded on its own (the lax.scan path), as vae.decode(z, 3).
    z = torch.randn(6, 4, 5, 6, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = torch_vae.decode(z, num_frames=3).sample
    err = rel_err(nchw(vae.decode(nhwc(z), num_frames=3)), ref)
    print(f"VAE decode 2 clips x 3 frames: rel L2 {err:.2e} (bound {BOUND})")
    assert err <= BOUND


@pytest.mark.parametrize("chunk", [2, 3])
def test_chunked_decode_matches_pipeline(torch_vae, vae, chunk):
    # 5 frames in chunks of 2 (2+2+1: lax.scan over two chunks, then a remainder) or 3 (3+2).
    z = torch.randn(5, 4, 7, 6, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ref = pipeline_decode(torch_vae, z, chunk)
        whole = torch_vae.decode(z, num_frames=5).sample
    if chunk == 2:  # also inside a caller's jit, as the pipeline runs it
        out = nnx.jit(lambda m, z: m.decode(z, num_frames=5, decode_chunk_size=2))(vae, nhwc(z))
    else:
        out = vae.decode(nhwc(z), num_frames=5, decode_chunk_size=chunk)
    err = rel_err(nchw(out), ref)
    print(f"VAE decode 5 frames, decode_chunk_size={chunk}: rel L2 {err:.2e} vs the pipeline loop (bound {BOUND}); "
          f"chunking itself changes the output by {rel_err(ref, whole):.2e}")
    assert rel_err(ref, whole) > 1e-3  # the test would not see a chunking bug otherwise
    assert err <= BOUND


def test_remat_changes_nothing(vae, vae_folder):
    # nnx.remat inside the chunk loop (lax.scan) must trace; the shape of the chunk-3 test is reused.
    remat = vae_from_diffusers(vae_folder, ModelOptions(remat="full"))
    z = jax.random.normal(jax.random.key(10), (5, 7, 6, 4))
    np.testing.assert_array_equal(remat.decode(z, 5, decode_chunk_size=3), vae.decode(z, 5, decode_chunk_size=3))


def test_decode_rejects_frames_that_do_not_form_clips(vae):
    with pytest.raises(ValueError, match="num_frames=3"):
        vae.decode(jnp.zeros((5, 4, 4, 4)), num_frames=3)


def test_round_trip_is_bit_exact(vae, vae_folder, tmp_path):
    out = str(tmp_path / "exported")
    vae_to_diffusers(vae, out)
    original = load_file(os.path.join(vae_folder, f"{WEIGHTS_NAME}.safetensors"))
    exported = load_file(os.path.join(out, f"{WEIGHTS_NAME}.safetensors"))
    assert sorted(exported) == sorted(original)
    for key, value in original.items():
        assert exported[key].dtype == value.dtype and np.array_equal(exported[key], value), key
    with open(os.path.join(vae_folder, "config.json")) as f:
        source_config = VAEConfig.from_dict(json.load(f))
    assert source_config == vae.config
    reloaded, info = TorchVAE.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_svd_xt_key_inventory_maps_one_to_one():
    """All 374 tensors of the SVD-XT VAE map to distinct Flax parameters of the right shape, and back."""
    with open(os.path.join(SVD_XT, "config.json")) as f:
        model = abstract_vae(VAEConfig.from_dict(json.load(f)), ModelOptions())
    inventory = {}
    with open(os.path.join(SVD_XT, "state_dict_keys.tsv")) as f:
        for line in f:
            key, shape = line.rstrip("\n").split("\t")
            inventory[key] = tuple(json.loads(shape.replace("(", "[").replace(")", "]").replace(",]", "]")))
    assert len(inventory) == 374
    mapped = {}
    for key, shape in inventory.items():
        flax_key, layout = flax_key_for(VAE_RULES, key)
        assert flax_key in model.shapes, key
        assert flax_shape(shape, layout) == tuple(model.shapes[flax_key].shape), key
        mapped[flax_key] = key
    assert sorted(mapped) == sorted(model.shapes)


# ---- bad input -------------------------------------------------------------------------------------

def _copy(folder: str, dest) -> str:
    dest = str(dest)
    shutil.copytree(folder, dest)
    return dest


def test_missing_config_is_named(vae_folder, tmp_path):
    folder = _copy(vae_folder, tmp_path / "vae")
    os.remove(os.path.join(folder, "config.json"))
    with pytest.raises(CheckpointError, match="config.json"):
        vae_from_diffusers(folder)


def test_wrong_class_name_is_named(vae_folder, tmp_path):
    folder = _copy(vae_folder, tmp_path / "vae")
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    with open(path, "w") as f:
        json.dump({**config, "_class_name": "AutoencoderKL"}, f)
    with pytest.raises(CheckpointError, match="AutoencoderKL, not AutoencoderKLTemporalDecoder"):
        vae_from_diffusers(folder)


def test_unknown_config_key_is_named(vae_folder, tmp_path):
    folder = _copy(vae_folder, tmp_path / "vae")
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    with open(path, "w") as f:
        json.dump({**config, "mid_block_add_attention": False}, f)
    with pytest.raises(CheckpointError, match="mid_block_add_attention"):
        vae_from_diffusers(folder)


def test_missing_tensor_is_named(vae_folder, tmp_path):
    folder = _copy(vae_folder, tmp_path / "vae")
    path = os.path.join(folder, f"{WEIGHTS_NAME}.safetensors")
    tensors = load_file(path)
    del tensors["decoder.up_blocks.1.resnets.2.time_mixer.mix_factor"]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"1 missing tensor\(s\): decoder.up_blocks.1.resnets.2.time_mixer"
                                              r".mix_factor") as info:
        vae_from_diffusers(folder)
    assert path in str(info.value)


def test_config_that_does_not_fit_the_weights_lists_every_problem(vae_folder, tmp_path):
    folder = _copy(vae_folder, tmp_path / "vae")
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    with open(path, "w") as f:
        json.dump({**config, "layers_per_block": 1}, f)
    with pytest.raises(CheckpointError, match="unexpected tensor") as info:
        vae_from_diffusers(folder)
    assert "decoder.mid_block.resnets.1.spatial_res_block.conv1.weight" in str(info.value)


# ---- full size (slow) ----------------------------------------------------------------------------

@pytest.mark.slow
def test_svd_xt_vae_with_random_weights(tmp_path):
    with open(os.path.join(SVD_XT, "config.json")) as f:
        config = json.load(f)
    torch.manual_seed(0)
    torch_vae = TorchVAE.from_config(config).eval()
    randomize_(torch_vae, 1)
    with open(os.path.join(SVD_XT, "state_dict_keys.tsv")) as f:
        inventory = [line.split("\t")[0] for line in f]
    assert sorted(torch_vae.state_dict()) == sorted(inventory)
    folder = str(tmp_path / "vae")
    torch_vae.save_pretrained(folder, safe_serialization=True)

    vae = vae_from_diffusers(folder)
    source = TensorSource([os.path.join(folder, f"{WEIGHTS_NAME}.safetensors")])
    assert len(plan_import(source, VAE_RULES, abstract_vae(vae.config, ModelOptions()).shapes, "VAE")) == 374
    assert len(flat_params(vae)) == 374

    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref_mean = torch_vae.encode(x).latent_dist.mode()
        ref_frames = torch_vae.decode(z, num_frames=3).sample
    err_encode = rel_err(nchw(vae.encode(nhwc(x))), ref_mean)
    err_decode = rel_err(nchw(vae.decode(nhwc(z), num_frames=3)), ref_frames)
    print(f"SVD-XT VAE: encode 64x64 rel L2 {err_encode:.2e}, decode 8x8 x 3 frames {err_decode:.2e} (bound {BOUND})")
    assert max(err_encode, err_decode) <= BOUND
