"""Apply a rulebook: torch tensors -> Flax parameters (strict) and back."""

from __future__ import annotations

from typing import Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from sfv_jax.convert.rulebook import (flax_key_for, flax_shape, to_flax_layout, to_torch_layout, torch_key_for,
                                      torch_shape)
from sfv_jax.convert.weight_files import TensorSource
from sfv_jax.errors import CheckpointError


def _listing(items: list[str], limit: int = 2000) -> str:
    return ", ".join(items) if sum(map(len, items)) < limit else ", ".join(items[:40]) + f", ... ({len(items)} in all)"


def plan_import(source: TensorSource, rules, target: Mapping[str, jax.ShapeDtypeStruct], what: str) -> dict[str, tuple[str, str]]:
    """Maps every source key to (flax_key, layout), checking names and shapes before reading data.

    Raises CheckpointError listing, at once, every unmapped source key, every target parameter
    left unfilled and every shape mismatch.
    """
    plan, unmapped, misshaped, filled = {}, [], [], {}
    for key in source.keys():
        found = flax_key_for(rules, key)
        if found is None or found[0] not in target:
            unmapped.append(key)
            continue
        flax_key, layout = found
        if flax_key in filled:
            unmapped.append(f"{key} (duplicates {filled[flax_key]})")
            continue
        expected = tuple(target[flax_key].shape)
        if flax_shape(source.shape(key), layout) != expected:
            misshaped.append(f"{key} {tuple(source.shape(key))} (model expects {torch_shape(expected, layout)})")
        filled[flax_key] = key
        plan[key] = (flax_key, layout)
    missing = [torch_key_for(rules, k)[0] if torch_key_for(rules, k) else k for k in target if k not in filled]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {_listing(sorted(missing))}")
    if misshaped:
        problems.append(f"{len(misshaped)} tensor(s) with the wrong shape: {_listing(misshaped)}")
    if unmapped:
        problems.append(f"{len(unmapped)} unexpected tensor(s): {_listing(sorted(unmapped))}")
    if problems:
        raise CheckpointError(f"{source.description} does not match {what}: " + "; ".join(problems)
                              + ". Check that the weights belong to this config.json (or re-download them)")
    return plan


def import_params(source: TensorSource, rules, target: Mapping[str, jax.ShapeDtypeStruct], what: str,
                  place: Callable[[str, np.ndarray], jax.Array] | None = None, progress: bool = False) -> dict[str, jax.Array]:
    """Reads, re-lays-out and places every tensor; one tensor is in host memory at a time.

    `place(flax_key, array)` puts a converted array where it belongs (default: the default device
    in the target dtype); pass one that device_puts into a sharding to shard while loading.
    """
    plan = plan_import(source, rules, target, what)
    if place is None:
        place = lambda key, array: jnp.asarray(array, dtype=target[key].dtype)
    params = {}
    for key, (flax_key, layout) in tqdm(plan.items(), desc=f"converting {what}", disable=not progress, unit="tensor"):
        array = to_flax_layout(source.get(key), layout)
        params[flax_key] = place(flax_key, np.ascontiguousarray(array.astype(target[flax_key].dtype, copy=False)))
    return params


def export_tensors(params: Mapping[str, jax.Array], rules, dtype=None) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (torch_key, numpy array in torch layout) for every parameter, one at a time."""
    for flax_key, value in params.items():
        found = torch_key_for(rules, flax_key)
        if found is None:
            raise CheckpointError(f"no export rule for parameter {flax_key}")
        torch_key, layout = found
        array = np.asarray(jax.device_get(value))
        if dtype is not None:
            array = array.astype(dtype)
        yield torch_key, np.ascontiguousarray(to_torch_layout(array, layout))
