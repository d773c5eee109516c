"""sfv-jax checkpoints: one Orbax folder holding the params and configs of several components.

Layout of CKPT/:
  sfv_jax.json   {"format": 1, "components": {name: {"class": ..., "config": {...}}}, "extra": {...}}
                 extra["pipeline"], for a converted pipeline folder: {"model_index": {...}, "files":
                 {"scheduler/scheduler_config.json": {...}, "feature_extractor/preprocessor_config.json": {...}}}
  params/        Orbax (OCDBT) tree {name: {"dotted.param.path": array}}
A training workdir is an sfv-jax checkpoint too (written by the training loop, read by the same code):
  sfv_jax.json   as above, plus "options" (the run's ModelOptions) and "params_from": {"train_checkpoints":
                 "checkpoints"}; each component names the "tree" (e.g. "g_ema", "encoders.vae") holding its params,
                 and optionally a "raw_tree" (the generator's raw weights, read with raw=True)
  checkpoints/<step>/state   Orbax train states, nested pure dicts; the latest complete step is read
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
from sfv_jax.fileio import read_json_object
from sfv_jax.errors import CheckpointError
from sfv_jax.fileio import atomic_directory
from sfv_jax.models import ModelOptions
from sfv_jax.models.nnx_state import AbstractModel, flat_params, flatten, unflatten_into

FORMAT_VERSION = 1
# Orbax's data files are cut near this size, so a checkpoint kept in git (models/toy/) has no file over ~10 MB.
DATA_FILE_BYTES = 8 * 2**20
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


def _component_entry(module: nnx.Module) -> dict:
    component = component_for_module(module)
    return {"class": component.class_name, "config": component.config_dict(module)}


def save_checkpoint(path: str, modules: Mapping[str, nnx.Module], extra: Mapping | None = None,
                    dtype: str | None = None, overwrite: bool = False) -> None:
    """Writes `modules` (e.g. {"unet": unet}) to `path` atomically; `dtype` casts the stored params."""
    index = {"format": FORMAT_VERSION, "components": {}, "extra": dict(extra or {})}
    tree = {}
    for name, module in modules.items():
        index["components"][name] = _component_entry(module)
        params = flat_params(module)
        tree[name] = {k: _to_store(v, dtype) for k, v in params.items()}
    with atomic_directory(path, overwrite=overwrite) as tmp:
        checkpointer = ocp.PyTreeCheckpointer()
        checkpointer.save(os.path.join(tmp, "params"), args=ocp.args.PyTreeSave(
            tree, ocdbt_target_data_file_size=DATA_FILE_BYTES))
        with open(os.path.join(tmp, INDEX_NAME), "w") as f:
            json.dump(index, f, indent=2)


def write_train_state_index(path: str, modules: Mapping[str, nnx.Module], trees: Mapping[str, str],
                            raw_trees: Mapping[str, str], train_checkpoints: str, options: Mapping,
                            extra: Mapping | None = None, frozen: Mapping | None = None) -> None:
    """Makes the folder `path` (a training workdir) an sfv-jax checkpoint of `modules` without copying weights.

    modules: {name: module}, abstract or concrete (only their class and config are written).
    trees: {name: dotted path of its params in the train state}, e.g. {"unet": "g_ema", "vae": "encoders.vae"};
      raw_trees: the alternatives read with raw=True (e.g. {"unet": "g_params"}).
    train_checkpoints: the sub-folder holding <step>/state Orbax train states.
    frozen: {"folder": sub-folder, "fields": [top-level state fields]}: trees under those fields are read from
      that folder (written once per run) where it exists, else from the step's state.
    options: the ModelOptions fields the modules compute with by default.
    """
    components = {name: {**_component_entry(module), "tree": trees[name],
                         **({"raw_tree": raw_trees[name]} if name in raw_trees else {})}
                  for name, module in modules.items()}
    index = {"format": FORMAT_VERSION, "components": components, "extra": dict(extra or {}),
             "options": dict(options), "params_from": {"train_checkpoints": train_checkpoints}}
    if frozen:
        index["params_from"]["frozen"] = dict(frozen)
    tmp = os.path.join(path, f"{INDEX_NAME}.tmp")
    with open(tmp, "w") as f:
        json.dump(index, f, indent=2)
    os.replace(tmp, os.path.join(path, INDEX_NAME))


def train_state_step(path: str, index: dict | None = None) -> int | None:
    """The latest complete train-state step a workdir checkpoint reads (None for a converted checkpoint)."""
    index = read_index(path) if index is None else index
    source = index.get("params_from")
    if source is None:
        return None
    folder = os.path.join(path, source["train_checkpoints"])
    # Orbax writes a step under a temporary name and renames it when complete: only integer names are done.
    steps = [int(n) for n in (os.listdir(folder) if os.path.isdir(folder) else ()) if n.isdigit()
             and os.path.isdir(os.path.join(folder, n, "state"))]
    if not steps:
        raise CheckpointError(f"{path}: has no complete checkpoint yet; train at least checkpoint_every steps")
    return max(steps)


def fingerprint(path: str) -> str:
    """What identifies the weights `path` holds, for results that must be recomputed when they change.

    A converted checkpoint: "sha256:<hex>" over its files' relative paths and contents (a model kept in git gives
    the same value in every clone). A training workdir: "workdir:<abs path>@<step>" (its latest complete step;
    hashing gigabytes of train states is not worth it for a folder that only grows).
    """
    import hashlib

    index = read_index(path)
    step = train_state_step(path, index)
    if step is not None:
        return f"workdir:{os.path.abspath(path)}@{step}"
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            if name == INDEX_NAME or folder != path:  # the index and the params, not READMEs or samples beside
                full = os.path.join(folder, name)
                digest.update(os.path.relpath(full, path).encode() + b"\0")
                with open(full, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def read_index(path: str) -> dict:
    index_path = os.path.join(path, INDEX_NAME)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: checkpoint folder not found")
    if not os.path.isfile(index_path):
        raise CheckpointError(f"{path}: not an sfv-jax checkpoint (no {INDEX_NAME}); create one with sfv-jax convert "
                              f"(a training workdir gets one when sfv-jax train starts or resumes in it)")
    index = read_json_object(index_path)
    if index.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{index_path}: format {index.get('format')} is not {FORMAT_VERSION}")
    return index


def load_checkpoint(path: str, options: ModelOptions | None = None, names: list[str] | None = None,
                    sharding_for: Callable[[str, str, jax.ShapeDtypeStruct], jax.sharding.Sharding] | None = None,
                    raw: bool = False) -> dict[str, nnx.Module]:
    """Restores the named components (default: all) as Flax modules.

    options: how the modules compute (default: the checkpoint's "options", else ModelOptions()).
    `sharding_for(component, param_key, shape)` gives each parameter's target sharding (default:
    the first local device); Orbax reads each array directly into it.
    raw: from a training workdir, a component's "raw_tree" (G's raw weights) instead of its "tree" (G's EMA).
    """
    path = os.path.abspath(path)  # Orbax refuses relative paths
    index = read_index(path)
    options = options or ModelOptions(**index.get("options", {}))
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
    step = train_state_step(path, index)
    if step is None:  # a converted checkpoint: each component's params flat ({dotted key: array}) under its name
        trees = {name: (name,) for name in names}
        sources = {os.path.join(path, "params"): names}
    else:  # a train state: each component's params nested, somewhere in the state
        entries = {name: index["components"][name] for name in names}
        trees = {name: tuple(e["raw_tree" if raw and "raw_tree" in e else "tree"].split(".")) for name, e in
                 entries.items()}
        sources = _train_state_sources(path, index, step, trees)
        target = {name: unflatten_into(abstract_models[name].tree, target[name]) for name in names}
    restored = {}
    for params_dir, group in sources.items():
        target_tree = _nest({trees[name]: target[name] for name in group})
        try:
            # partial_restore: read only the requested components; arrays are cast to the target dtype.
            found = ocp.PyTreeCheckpointer().restore(params_dir, args=ocp.args.PyTreeRestore(
                item=target_tree, restore_args=ocp.checkpoint_utils.construct_restore_args(target_tree),
                partial_restore=True))
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise CheckpointError(f"{params_dir}: params do not match the stored configs ({str(e).splitlines()[0]})"
                                  ) from None
        restored.update({name: _get(found, trees[name]) for name in group})
    return {name: abstract_models[name].merge(flatten(restored[name])) for name in names}


def _train_state_sources(path: str, index: dict, step: int, trees: Mapping[str, tuple]) -> dict[str, list[str]]:
    """{Orbax tree folder: [component names read from it]}: the step's state, and the workdir's frozen folder
    for components under a frozen field (where that folder exists; a workdir from before it keeps them in the
    step)."""
    source = index["params_from"]
    step_dir = os.path.join(path, source["train_checkpoints"], str(step), "state")
    frozen = source.get("frozen", {})
    frozen_dir = os.path.join(path, frozen["folder"]) if frozen else None
    out: dict[str, list[str]] = {}
    for name, keys in trees.items():
        in_frozen = frozen_dir and keys[0] in frozen["fields"] and os.path.isdir(frozen_dir)
        out.setdefault(frozen_dir if in_frozen else step_dir, []).append(name)
    return out


def _nest(trees: Mapping[tuple, dict]) -> dict:
    """{("encoders", "vae"): tree} -> {"encoders": {"vae": tree}}."""
    out: dict = {}
    for keys, tree in trees.items():
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = tree
    return out


def _get(tree: Mapping, keys: tuple):
    for key in keys:
        tree = tree[key]
    return tree

