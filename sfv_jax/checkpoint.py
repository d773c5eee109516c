"""sfv-jax checkpoints: one Orbax folder holding the params and configs of several components.

Layout of CKPT/:
  sfv_jax.json   {"format": 1, "components": {name: {"class": ..., "config": {...}}}, "extra": {...}}
                 extra["pipeline"], for a converted pipeline folder: {"model_index": {...}, "files":
                 {"scheduler/scheduler_config.json": {...}, "feature_extractor/preprocessor_config.json": {...}}}
  params/        Orbax (OCDBT) tree {name: {"dotted.param.path": array}}
Restoring builds each module abstractly and lets Orbax read every array straight into its
target sharding, so no host ever holds a full replicated copy per device.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from sfv_jax.convert.components import component_for_class, component_for_module
from sfv_jax.convert.module_state import AbstractModel, flat_params
from sfv_jax.convert.weight_files import read_json_object
from sfv_jax.errors import CheckpointError
from sfv_jax.fileio import atomic_directory
from sfv_jax.models import ModelOptions

FORMAT_VERSION = 1
INDEX_NAME = "sfv_jax.json"


def _to_store(value: jax.Array, dtype=None) -> jax.Array | np.ndarray:
    """`value` (cast to `dtype`) as Orbax should write it.

    An array on one device goes to the host as numpy: Orbax writes numpy arrays several times faster
    than small jax.Arrays, and a host cast avoids compiling a device cast per parameter shape.
    Sharded arrays stay on their devices (cast there), so Orbax writes each shard where it lives.
    """
    dtype = jax.numpy.dtype(dtype) if dtype else value.dtype
    if isinstance(value, jax.Array) and len(value.sharding.device_set) > 1:
        return value if value.dtype == dtype else value.astype(dtype)
    return np.asarray(value).astype(dtype, copy=False)


def save_checkpoint(path: str, modules: Mapping[str, nnx.Module], extra: Mapping | None = None,
                    dtype: str | None = None, overwrite: bool = False) -> None:
    """Writes `modules` (e.g. {"unet": unet}) to `path` atomically; `dtype` casts the stored params."""
    index = {"format": FORMAT_VERSION, "components": {}, "extra": dict(extra or {})}
    tree = {}
    for name, module in modules.items():
        component = component_for_module(module)
        index["components"][name] = {"class": component.class_name, "config": component.config_dict(module)}
        params = flat_params(module)
        tree[name] = {k: _to_store(v, dtype) for k, v in params.items()}
    with atomic_directory(path, overwrite=overwrite) as tmp:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(os.path.join(tmp, "params"), tree)
        checkpointer.wait_until_finished()
        with open(os.path.join(tmp, INDEX_NAME), "w") as f:
            json.dump(index, f, indent=2)


def read_index(path: str) -> dict:
    index_path = os.path.join(path, INDEX_NAME)
    if not os.path.isfile(index_path):
        raise CheckpointError(f"{path}: not an sfv-jax checkpoint (no {INDEX_NAME}); create one with sfv-jax convert")
    index = read_json_object(index_path)
    if index.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{index_path}: format {index.get('format')} is not {FORMAT_VERSION}")
    return index


def load_checkpoint(path: str, options: ModelOptions = ModelOptions(), names: list[str] | None = None,
                    sharding_for: Callable[[str, str, jax.ShapeDtypeStruct], jax.sharding.Sharding] | None = None
                    ) -> dict[str, nnx.Module]:
    """Restores the named components (default: all) as Flax modules.

    `sharding_for(component, param_key, shape)` gives each parameter's target sharding (default:
    the first local device); Orbax reads each array directly into it.
    """
    path = os.path.abspath(path)  # Orbax refuses relative paths
    index = read_index(path)
    names = list(index["components"]) if names is None else names
    abstract_models, target = {}, {}
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    for name in names:
        if name not in index["components"]:
            raise CheckpointError(f"{path}: has no component {name!r} (it has {sorted(index['components'])})")
        entry = index["components"][name]
        component = component_for_class(entry.get("class"), f"{path}/{INDEX_NAME} component {name!r}")
        try:
            config = component.config_from_dict(entry["config"])
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{path}/{INDEX_NAME}: bad config of component {name!r} ({e})") from None
        model = AbstractModel(lambda rngs: component.build(config, options, rngs))
        abstract_models[name] = model
        target[name] = {
            key: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding_for(name, key, s) if sharding_for else default)
            for key, s in model.shapes.items()}
    try:
        # partial_restore: read only the requested components; arrays are cast to the target dtype.
        restored = ocp.PyTreeCheckpointer().restore(os.path.join(path, "params"), args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise CheckpointError(f"{path}: params do not match the stored configs ({str(e).splitlines()[0]})") from None
    return {name: abstract_models[name].merge(restored[name]) for name in names}

