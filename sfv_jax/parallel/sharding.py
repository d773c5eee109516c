"""Shardings of the SF-V train state and batch, and the train step jitted over them."""

from __future__ import annotations

import math
from typing import Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from sfv_jax.parallel.rules import batch_spec, logical_axes, spec_for
from sfv_jax.parallel.step_programs import STEP_PROGRAMS, FusedStep, SplitStep


def _last_key(path) -> str | None:
    last = path[-1] if path else None
    key = getattr(last, "key", getattr(last, "name", None))
    return key if isinstance(key, str) else None


def state_specs(abstract_state, sharding_config, sizes: dict[str, int]):
    """PartitionSpec of every leaf of an (abstract) state pytree, by its path and shape."""
    rules = sharding_config.rules
    return jax.tree_util.tree_map_with_path(
        lambda path, x: spec_for(logical_axes(_last_key(path), x.shape), x.shape, rules, sizes,
                                 sharding_config.fsdp_min_size), abstract_state)


def state_shardings(abstract_state, mesh: jax.sharding.Mesh, sharding_config):
    sizes = dict(zip(mesh.axis_names, mesh.devices.shape))
    return jax.tree.map(lambda s: NamedSharding(mesh, s), state_specs(abstract_state, sharding_config, sizes))


def batch_shardings(batch, mesh: jax.sharding.Mesh, sharding_config):
    """Every batch array sharded on its leading (batch) axis over the "batch" rule's mesh axes."""
    spec = batch_spec(sharding_config.rules)
    return jax.tree.map(lambda _: NamedSharding(mesh, spec), batch)


def per_device_bytes(abstract_tree, specs, sizes: dict[str, int]) -> int:
    """Bytes one device holds of a tree under `specs` (no mesh or devices needed)."""
    total = 0
    for x, spec in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P))):
        shape = list(x.shape)
        for i, axes in enumerate(spec):
            if axes is not None:
                names = (axes,) if isinstance(axes, str) else axes
                shape[i] = -(-shape[i] // math.prod(sizes[n] for n in names))
        total += int(np.prod(shape)) * np.dtype(x.dtype).itemsize
    return total


def jit_train_step(train_step: Callable, abstract_state, abstract_batch, mesh: jax.sharding.Mesh,
                   sharding_config, programs: str = "split"):
    """train_step jitted with explicit state and batch shardings as `programs` says ("split": the gradients and
    the update as two programs; "fused": one; sfv_jax.parallel.step_programs); the state is donated.

    Returns (step, state shardings, batch shardings): step(state, batch) -> (state, metrics), and
    step.compile(abstract state, abstract batch) compiles ahead of time. Metrics come back replicated.
    """
    if programs not in STEP_PROGRAMS:
        raise ValueError(f"step_programs={programs!r}: use one of {STEP_PROGRAMS}")
    state_sh = state_shardings(abstract_state, mesh, sharding_config)
    batch_sh = batch_shardings(abstract_batch, mesh, sharding_config)
    make = SplitStep if programs == "split" else FusedStep
    return make(train_step, state_sh, batch_sh, NamedSharding(mesh, P())), state_sh, batch_sh
