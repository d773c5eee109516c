"""What a resumed run may change in its config, and the record of what `--reconfigure` accepted.

A workdir's checkpoints are a function of the config it was started with (WORKDIR/config.json). A
resume with a different objective, optimiser, discriminator, seed, data, batch or model would go on
silently as a different run, so such a change stops the run with one line naming every changed key,
unless the user passes `sfv-jax train --reconfigure`; then the changes are printed, appended to
WORKDIR/reconfigure.log with a timestamp, and config.json becomes the new config. Run settings
(total_steps, log_every, checkpoint_every, keep_checkpoints, sample_every, max_consecutive_nonfinite,
init_checkpoint and scratch_init, which only choose the step-0 weights, mesh, sharding, and micro_batch_loop and
step_programs, which only choose how the same step is compiled) may change freely: extending total_steps is how a
run is continued.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

import jax

from sfv_jax.errors import ConfigError

# Top-level config keys a resumed run must keep (a section name covers every key under it).
GUARDED = ("objective", "seed", "global_batch_size", "grad_accum_steps", "data", "sfv", "denoise", "vae_loss",
           "optim", "disc", "unet", "model", "vae", "image_encoder")
RECONFIGURE_LOG = "reconfigure.log"
_ABSENT = "<absent>"


class ConfigChangedError(ConfigError):
    """A workdir is resumed with a config that trains differently from the one it was started with."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}, "c": [1, 2]} -> {"a.b": 1, "c": [1, 2]}: dotted keys of the leaves (lists stay whole)."""
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def config_changes(saved: dict, current: dict, guarded: tuple[str, ...] = GUARDED) -> list[tuple[str, Any, Any]]:
    """[(dotted key, saved value, current value)] of the guarded keys that differ, in sorted key order.

    saved, current: JSON-style nested dicts (tuples as lists). A key only one side has is a change
    too (its other side is "<absent>"): a config file that gained or lost a field trains differently.
    """
    pick = lambda d: flatten({k: d[k] for k in guarded if k in d})
    old, new = pick(saved), pick(current)
    return [(k, old.get(k, _ABSENT), new.get(k, _ABSENT)) for k in sorted(old.keys() | new.keys())
            if old.get(k, _ABSENT) != new.get(k, _ABSENT)]


def format_changes(changes: list[tuple[str, Any, Any]]) -> str:
    """"optim.g_lr 1e-05 -> 2e-05, seed 0 -> 1" (values as JSON, one line)."""
    show = lambda v: v if v == _ABSENT else json.dumps(v)
    return ", ".join(f"{key} {show(old)} -> {show(new)}" for key, old, new in changes)


def resume_changes(workdir: str, current: dict, reconfigure: bool) -> list[tuple[str, Any, Any]]:
    """The guarded changes of `current` against WORKDIR/config.json; raises unless `reconfigure`.

    Reads only: nothing in the workdir is written (see record_reconfigure, once the resume succeeded).
    """
    from sfv_jax.fileio import read_json_object
    from sfv_jax.train import workdir as wd
    saved = {"objective": "sfv", **read_json_object(os.path.join(workdir, wd.CONFIG))}  # runs before the field
    changes = config_changes(saved, current)
    if changes and not reconfigure:
        raise ConfigChangedError(
            f"{workdir} was trained with a different config: {format_changes(changes)}; resume with the same "
            f"config, pass --reconfigure to continue this run with the changes, or start a new --workdir")
    return changes


def record_reconfigure(workdir: str, current: dict, changes: list[tuple[str, Any, Any]], step: int) -> str:
    """Appends the accepted changes to WORKDIR/reconfigure.log and makes `current` the workdir's config.

    Returns the logged line ("<UTC time> step <N>: <changes>"). Call after the checkpoint was restored
    (a change the checkpoint cannot take, e.g. a wider UNet, fails there and leaves no record).
    """
    from sfv_jax.train import workdir as wd
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    line = f"{stamp} resumed at step {step} with --reconfigure: {format_changes(changes)}"
    with open(os.path.join(workdir, RECONFIGURE_LOG), "a") as f:
        f.write(line + "\n")
    wd.write_json_atomic(os.path.join(workdir, wd.CONFIG), current)
    return line


def with_config_learning_rates(state, optim):
    """`state` (SF-V's) whose optimisers use optim.g_lr / optim.d_lr (each objective's with_learning_rates).

    The learning rates live in the optimiser states (optax.inject_hyperparams), so a restored state
    keeps the old ones; a reconfigured run sets them from the config (same dtype and sharding).
    """
    from sfv_jax.train.objectives import SFVObjective
    return SFVObjective.with_learning_rates(None, state, optim)
