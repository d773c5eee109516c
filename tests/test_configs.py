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
