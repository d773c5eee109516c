"""Which config changes a resumed run refuses (sfv_jax.train.config_diff); no training, a second or so."""

from __future__ import annotations

import json
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest

from sfv_jax.config import load_config
from sfv_jax.errors import SfvError
from sfv_jax.train import config_diff
from sfv_jax.train import workdir as wd

# What issue 14 lists as "trains differently": every key under these must be guarded.
MUST_GUARD = ("objective", "sfv", "denoise", "vae_loss", "optim", "disc", "seed", "data", "global_batch_size",
              "grad_accum_steps", "unet", "model", "vae", "image_encoder")
FREE = ("total_steps", "log_every", "checkpoint_every", "keep_checkpoints", "sample_every",
        "max_consecutive_nonfinite", "init_checkpoint", "scratch_init", "mesh", "sharding", "eval", "micro_batch_loop",
        "step_programs")


def micro() -> dict:
    return wd.config_to_dict(load_config("configs/tiny_sfv.py:micro", []))


def changed(value):
    """A different value of the same JSON type (so a type-blind comparison would still see it)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "_x"
    if isinstance(value, list):
        return value + value[:1] if value else [0]
    return "x" if value is None else None


def set_key(tree: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        tree = tree[p]
    tree[last] = value


@pytest.mark.parametrize("file", ["configs/tiny_sfv.py:micro", "configs/sfv_svd.py", "configs/toy.py:vae",
                                  "configs/toy.py:teacher", "configs/toy.py:sfv", "configs/svd_finetune.py"])
def test_every_top_level_key_is_either_guarded_or_a_run_setting(file):
    """Catches a config section added (or a guarded one dropped) without deciding whether a resume may change it."""
    keys = set(wd.config_to_dict(load_config(file, [])))
    assert set(config_diff.GUARDED) == set(MUST_GUARD)
    assert keys <= set(config_diff.GUARDED) | set(FREE), keys - (set(config_diff.GUARDED) | set(FREE))
    assert set(FREE) <= keys


def test_a_changed_objective_is_a_change_and_old_workdirs_read_as_sfv(tmp_path):
    """Catches a resume that silently continues an SF-V workdir as a denoise run, and a workdir written before
    config.objective existed (no such key) that a current SF-V config could not resume."""
    saved, current = micro(), micro()
    current["objective"] = "denoise"
    assert config_diff.config_changes(saved, current) == [("objective", "sfv", "denoise")]
    del saved["objective"]
    os.makedirs(tmp_path / "checkpoints")
    wd.write_json_atomic(str(tmp_path / "config.json"), saved)
    assert config_diff.resume_changes(str(tmp_path), micro(), reconfigure=False) == []


def test_each_guarded_leaf_alone_is_reported_with_old_and_new_value():
    """Catches a guarded key that is silently accepted when changed (e.g. optim.g_lr, sfv.lambda_recon,
    data.path, unet.block_out_channels), a comparison of whole sections that cannot name the key, and
    a report that swaps old and new."""
    saved = micro()
    leaves = config_diff.flatten({k: saved[k] for k in MUST_GUARD if k in saved})
    assert len(leaves) > 60  # every field of every guarded section, not just the top level
    for key, old in leaves.items():
        current = micro()
        set_key(current, key, changed(old))
        assert config_diff.config_changes(saved, current) == [(key, old, changed(old))], key


def test_run_settings_may_change_freely():
    """Catches a resume that refuses a longer total_steps (how a run is continued) or other run settings."""
    saved, current = micro(), micro()
    for key in ("total_steps", "log_every", "checkpoint_every", "keep_checkpoints", "sample_every",
                "max_consecutive_nonfinite", "init_checkpoint", "mesh.data", "sharding.fsdp_min_size"):
        set_key(current, key, changed(config_diff.flatten(saved)[key]))
    assert config_diff.config_changes(saved, current) == []


def test_a_field_only_one_side_has_is_a_change():
    """Catches a comparison over the saved keys only (a config that gained a loss weight would resume silently)."""
    saved, current = micro(), micro()
    current["sfv"]["new_weight"] = 0.5
    del current["disc"]["leaky_slope"]
    changes = config_diff.config_changes(saved, current)
    assert changes == [("disc.leaky_slope", 0.2, "<absent>"), ("sfv.new_weight", "<absent>", 0.5)]
    assert config_diff.format_changes(changes) == "disc.leaky_slope 0.2 -> <absent>, sfv.new_weight <absent> -> 0.5"


def snapshot(folder) -> dict:
    return {os.path.relpath(os.path.join(d, f), folder): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(folder) for f in files}


def test_refusal_is_one_line_and_reconfigure_is_recorded(tmp_path):
    """Catches a refusal that writes to the workdir, an error that is not an SfvError (exit 2) or spans lines,
    a --reconfigure that leaves config.json old (the next plain resume would be refused again), and a
    reconfigure.log entry without time, step or keys."""
    workdir = str(tmp_path)
    wd.write_json_atomic(os.path.join(workdir, wd.CONFIG), micro())
    current = micro()
    current["optim"]["g_lr"], current["seed"], current["total_steps"] = 2e-5, 1, 1000
    before = snapshot(workdir)
    with pytest.raises(config_diff.ConfigChangedError) as e:
        config_diff.resume_changes(workdir, current, reconfigure=False)
    assert isinstance(e.value, SfvError) and "\n" not in str(e.value)
    assert "optim.g_lr 1e-05 -> 2e-05, seed 0 -> 1;" in str(e.value) and "--reconfigure" in str(e.value)
    assert "total_steps" not in str(e.value)
    changes = config_diff.resume_changes(workdir, current, reconfigure=True)
    assert snapshot(workdir) == before
    line = config_diff.record_reconfigure(workdir, current, changes, step=6)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00 resumed at step 6 with --reconfigure: "
                        r"optim\.g_lr 1e-05 -> 2e-05, seed 0 -> 1", line), line
    assert open(os.path.join(workdir, config_diff.RECONFIGURE_LOG)).read() == line + "\n"
    assert json.load(open(os.path.join(workdir, wd.CONFIG))) == current
    assert config_diff.resume_changes(workdir, current, reconfigure=False) == []


def test_reconfigured_learning_rates_reach_the_restored_optimiser_states():
    """Catches a --reconfigure of optim.g_lr / d_lr that the restored optimiser state silently overrides
    (optax.inject_hyperparams keeps the learning rate in the state), and one that touches the moments."""
    from sfv_jax.train.state import TrainState, make_optimizer
    config = load_config("configs/tiny_sfv.py:micro", [])
    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    g_opt = make_optimizer(config.optim, config.optim.g_lr).init(params)
    d_opt = make_optimizer(config.optim, config.optim.d_lr).init(params)
    state = TrainState(step=jnp.zeros((), jnp.int32), rng=jnp.zeros(2, jnp.uint32), g_params=params, g_ema=params,
                       d_heads=params, backbone={}, g_opt=g_opt, d_opt=d_opt)
    config = load_config("configs/tiny_sfv.py:micro", ["optim.g_lr=3e-5", "optim.d_lr=7e-4"])
    new = config_diff.with_config_learning_rates(state, config.optim)
    assert float(new.g_opt.hyperparams["learning_rate"]) == np.float32(3e-5)
    assert float(new.d_opt.hyperparams["learning_rate"]) == np.float32(7e-4)
    assert new.g_opt.hyperparams["learning_rate"].dtype == g_opt.hyperparams["learning_rate"].dtype
    assert new.g_opt.inner_state is g_opt.inner_state and new.g_params is params
