"""The UNet converter: exact round trips, every diffusers weight layout, and loud failures."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from sfv_jax.cli import main
from sfv_jax.convert import unet_from_diffusers, unet_to_diffusers
from sfv_jax.convert.engine import plan_import
from sfv_jax.convert.unet import abstract_unet
from sfv_jax.convert.unet_rules import UNET_RULES
from sfv_jax.convert.weight_files import TensorSource
from sfv_jax.models import ModelOptions, UNetConfig
from sfv_jax.models.nnx_state import flat_params
from tests.reference import DATA
from tests.unet_reference import save_unet, tiny_torch_unet

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory):
    return save_unet(tiny_torch_unet(seed=5), str(tmp_path_factory.mktemp("unet") / "unet"))


def test_round_trip_is_bit_exact(unet_folder, tmp_path):
    from diffusers import UNetSpatioTemporalConditionModel as TorchUNet
    out = str(tmp_path / "exported")
    unet_to_diffusers(unet_from_diffusers(unet_folder), out)
    original, exported = load_file(os.path.join(unet_folder, WEIGHTS)), load_file(os.path.join(out, WEIGHTS))
    assert sorted(original) == sorted(exported)
    for key, value in original.items():
        assert exported[key].dtype == value.dtype and np.array_equal(exported[key], value), key
    # diffusers itself loads what we wrote, with the same config.
    reloaded = TorchUNet.from_pretrained(out)
    assert list(reloaded.config.block_out_channels) == [32, 64, 64, 64]


def test_fp16_variant_and_sharded_weights(tmp_path):
    torch_unet = tiny_torch_unet(seed=6)
    reference = flat_params(unet_from_diffusers(save_unet(torch_unet, str(tmp_path / "plain"))))
    sharded = save_unet(torch_unet, str(tmp_path / "sharded"), max_shard_size="200KB")
    assert any(name.endswith(".index.json") for name in os.listdir(sharded))
    for key, value in flat_params(unet_from_diffusers(sharded)).items():
        assert np.array_equal(value, reference[key]), key
    torch_unet = torch_unet.half()
    fp16 = save_unet(torch_unet, str(tmp_path / "fp16"), variant="fp16")
    fp16_sharded = save_unet(torch_unet, str(tmp_path / "fp16_sharded"), variant="fp16", max_shard_size="200KB")
    assert any(".index.fp16." in name for name in os.listdir(fp16_sharded))  # diffusers' variant index name
    for folder in (fp16, fp16_sharded):
        loaded = flat_params(unet_from_diffusers(folder))  # the only variant present is found
        assert loaded["conv_in.kernel"].dtype == np.float32
        for key, value in loaded.items():
            np.testing.assert_array_equal(value, np.asarray(reference[key]).astype(np.float16).astype(np.float32))


def test_full_size_svd_xt_inventory_maps_one_to_one():
    """All 1428 tensors of the real SVD-XT UNet map onto the Flax model with matching shapes."""
    inventory = {}
    for line in open(os.path.join(DATA, "unet", "state_dict_keys.tsv")):
        name, shape = line.rstrip("\n").split("\t")
        inventory[name] = tuple(json.loads(shape.replace("(", "[").replace(",)", "]").replace(")", "]")))
    assert len(inventory) == 1428

    class Inventory(TensorSource):
        def __init__(self):
            self.files = []
            self._where = inventory

        def shape(self, key):
            return inventory[key]

    config = UNetConfig.from_dict(json.load(open(os.path.join(DATA, "unet", "config.json"))))
    model = abstract_unet(config, ModelOptions())
    plan = plan_import(Inventory(), UNET_RULES, model.shapes, "SVD-XT UNet")
    assert len(plan) == len(model.shapes) == 1428


def _write_config(folder, **changes):
    path = os.path.join(folder, "config.json")
    config = json.load(open(path))
    config.update(changes)
    json.dump(config, open(path, "w"))


def _break_missing_config(folder):
    os.remove(os.path.join(folder, "config.json"))
    return "config.json"


def _break_missing_tensor(folder):
    tensors = load_file(os.path.join(folder, WEIGHTS))
    del tensors["mid_block.attentions.0.proj_in.weight"]
    save_file(tensors, os.path.join(folder, WEIGHTS))
    return "mid_block.attentions.0.proj_in.weight"


def _break_wrong_shape(folder):
    tensors = load_file(os.path.join(folder, WEIGHTS))
    tensors["conv_out.weight"] = np.zeros((4, 32, 3, 1), np.float32)
    save_file(tensors, os.path.join(folder, WEIGHTS))
    return "conv_out.weight"


def _break_truncated(folder):
    path = os.path.join(folder, WEIGHTS)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 1000)
    return "truncated"


def _break_other_class(folder):
    _write_config(folder, _class_name="UNet2DConditionModel")  # Stable Diffusion's UNet, not SVD's
    return "UNet2DConditionModel"


def _break_unknown_config_key(folder):
    _write_config(folder, attention_flavour="mystery")
    return "attention_flavour"


@pytest.mark.parametrize("breakage", [_break_missing_config, _break_missing_tensor, _break_wrong_shape,
                                      _break_truncated, _break_other_class, _break_unknown_config_key])
def test_bad_input_is_one_line_error_and_leaves_nothing(unet_folder, tmp_path, capsys, breakage):
    import shutil
    folder = str(tmp_path / "unet")
    shutil.copytree(unet_folder, folder)
    expected = breakage(folder)
    out = tmp_path / "ckpt"
    code = main(["convert", "--diffusers", folder, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert expected in err and folder in err, err
    assert not out.exists()
    assert os.listdir(tmp_path) == ["unet"], "temporary output left behind"


def test_cli_convert_then_export_round_trip(unet_folder, tmp_path, capsys):
    ckpt, exported = tmp_path / "ckpt", tmp_path / "exported"
    assert main(["convert", "--diffusers", unet_folder, "--out", str(ckpt)]) == 0
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(exported)]) == 0
    original, back = load_file(os.path.join(unet_folder, WEIGHTS)), load_file(str(exported / WEIGHTS))
    assert all(np.array_equal(back[k], v) for k, v in original.items()) and len(back) == len(original)
    # An existing output is never overwritten silently.
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(exported)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_bfloat16_checkpoint(unet_folder, tmp_path):
    from sfv_jax.checkpoint import load_checkpoint
    ckpt = tmp_path / "ckpt"
    assert main(["convert", "--diffusers", unet_folder, "--out", str(ckpt), "--dtype", "bfloat16"]) == 0
    unet = load_checkpoint(str(ckpt), ModelOptions(param_dtype="bfloat16"))["unet"]
    original = load_file(os.path.join(unet_folder, WEIGHTS))
    kernel = np.asarray(unet.conv_in.kernel[...])
    assert kernel.dtype.name == "bfloat16"
    np.testing.assert_allclose(kernel.astype(np.float32), original["conv_in.weight"].transpose(2, 3, 1, 0), rtol=1e-2)


def test_relative_paths_work(unet_folder, tmp_path, monkeypatch):
    from sfv_jax.checkpoint import load_checkpoint
    monkeypatch.chdir(tmp_path)
    assert main(["convert", "--diffusers", unet_folder, "--out", "ckpt"]) == 0
    assert "unet" in load_checkpoint("ckpt")
