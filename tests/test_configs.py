"""Config files: they build the models they describe, and they reject keys they do not define."""

from __future__ import annotations

import json
import os

import pytest

from sfv_jax.config import load_config
from sfv_jax.errors import ConfigError
from sfv_jax.models import ModelOptions, UNetConfig
from tests.reference import DATA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_path(name):
    return os.path.join(ROOT, "configs", name)


def test_svd_xt_config_is_the_real_one():
    config = load_config(config_path("svd_xt.py"))
    real = UNetConfig.from_dict(json.load(open(os.path.join(DATA, "unet", "config.json"))))
    assert UNetConfig.from_dict(config.unet.to_dict()) == real


def test_svd_is_svd_xt_with_14_frames():
    svd, xt = (UNetConfig.from_dict(load_config(config_path(f)).unet.to_dict()) for f in ("svd.py", "svd_xt.py"))
    assert svd.num_frames == 14 and xt.num_frames == 25
    assert svd.block_out_channels == xt.block_out_channels and svd.num_attention_heads == xt.num_attention_heads


def test_tiny_config_builds_the_same_architecture():
    tiny = UNetConfig.from_dict(load_config(config_path("tiny.py")).unet.to_dict())
    xt = UNetConfig()
    assert tiny.down_block_types == xt.down_block_types and tiny.up_block_types == xt.up_block_types
    ModelOptions(**load_config(config_path("tiny.py")).model.to_dict())


def test_overrides_apply_and_unknown_keys_are_named():
    config = load_config(config_path("tiny.py"), ["model.dtype=bfloat16", "seed=3"])
    assert config.model.dtype == "bfloat16" and config.seed == 3
    with pytest.raises(ConfigError, match="model.dtpye"):
        load_config(config_path("tiny.py"), ["model.dtpye=bfloat16"])
    with pytest.raises(ConfigError, match="'modle'"):
        load_config(config_path("tiny.py"), ["modle.dtype=bfloat16"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(config_path("nope.py"))


def test_config_is_locked_against_typos_in_code():
    config = load_config(config_path("svd_xt.py"))
    with pytest.raises(AttributeError, match="num_frame"):
        config.unet.num_frame = 14


def test_unknown_unet_and_option_fields_are_errors():
    with pytest.raises(ValueError, match="bogus"):
        UNetConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="attention"):
        ModelOptions(attention="flash")


@pytest.mark.parametrize("grid, downsample", [("", 8), ("4x", 4)])
def test_toy_stack_configs_chain_and_keep_two_channels_per_group(grid, downsample):
    """configs/toy.py: the three variants of each latent grid describe one stack (the teacher's VAE is the vae run's architecture,
    the student's UNet, VAE and CLIP are the teacher's), every UNet and VAE GroupNorm (32 groups) sees >= 2
    channels per group, CLIP's projection is the UNet's cross-attention width, the data latents are scaled by
    the VAE's own scaling factor, and the clips are >= 64x64 with >= 8 frames. Catches a toy level at 32 channels
    (each channel normalised alone: the resnets' time embedding erased), or a chain whose init_checkpoint would
    not load, or a UNet sized for another grid than its VAE's (latents of 64 / downsample pixels a side)."""
    from sfv_jax.models.unet_config import UNetConfig
    from sfv_jax.models.vae import VAEConfig
    vae, teacher, sfv = (load_config(config_path("toy.py") + f":{v}{grid}") for v in ("vae", "teacher", "sfv"))
    assert (vae.objective, teacher.objective, sfv.objective) == ("vae", "denoise", "sfv")
    assert vae.vae.to_dict() == teacher.vae.to_dict() == sfv.vae.to_dict()
    assert teacher.unet.to_dict() == sfv.unet.to_dict()
    assert teacher.image_encoder.to_dict() == sfv.image_encoder.to_dict()
    for config in (vae, teacher, sfv):
        unet, autoencoder = UNetConfig.from_dict(config.unet.to_dict()), VAEConfig.from_dict(config.vae.to_dict())
        assert min(unet.block_out_channels) >= 64 and min(autoencoder.block_out_channels) >= 64
        assert config.image_encoder.projection_dim == unet.cross_attention_dim
        assert config.data.latent_scale == autoencoder.scaling_factor
        assert config.data.height >= 64 and config.data.width >= 64 and config.data.num_frames >= 8
        assert unet.num_frames == config.data.num_frames
        assert 2 ** (len(autoencoder.block_out_channels) - 1) == downsample
        assert unet.sample_size * downsample == config.data.height == config.data.width
    with pytest.raises(ConfigError, match="unknown variant 'micro'"):
        load_config(config_path("toy.py") + ":micro")
