"""Converting a diffusers folder (one component, or a whole pipeline) to and from an sfv-jax checkpoint.

A pipeline folder (model_index.json, unet/, vae/, image_encoder/, scheduler/, feature_extractor/)
is checked as a whole before any weight is read: every config, every weight file's header and
every tensor name and shape, so a bad folder fails in seconds with a message naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

from flax import nnx

from sfv_jax.convert.components import (PIPELINE_COMPONENTS, PIPELINE_CONFIG_FILES, Component,
                                        component_for_config, component_for_module)
from sfv_jax.convert.engine import import_params, plan_import
from sfv_jax.convert.weight_files import TensorSource, read_config, weight_paths
from sfv_jax.fileio import read_json_object
from sfv_jax.errors import CheckpointError
from sfv_jax.fileio import atomic_directory
from sfv_jax.models import ModelOptions
from sfv_jax.models.nnx_state import AbstractModel

MODEL_INDEX = "model_index.json"


def is_pipeline_folder(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, MODEL_INDEX))


@dataclasses.dataclass
class _Prepared:
    """One component folder, checked: its config parsed and its weight files' headers read."""
    component: Component
    config: object
    source: TensorSource
    model: AbstractModel | None = None

    def plan(self, options: ModelOptions) -> None:
        """Builds the model abstractly and maps every tensor (raises, listing every problem)."""
        c = self.component
        self.model = AbstractModel(lambda rngs: c.build(self.config, options, rngs))
        plan_import(self.source, c.rules, self.model.shapes, c.class_name)

    def convert(self, place: Callable | None, progress: bool) -> nnx.Module:
        c = self.component
        return self.model.merge(import_params(self.source, c.rules, self.model.shapes, c.class_name, place, progress))


def _prepare(folder: str, variant: str | None, expected_class: str | None = None, name: str | None = None) -> _Prepared:
    """The cheap checks of a component folder: config class and values, weight files and their headers."""
    config_path = os.path.join(folder, "config.json")
    raw = read_config(folder)
    component = component_for_config(raw, config_path)
    if expected_class is not None and component.class_name != expected_class:
        raise CheckpointError(f"{config_path}: is the config of {component.class_name}, but a pipeline's {name}/ folder "
                              f"must hold a {expected_class}")
    try:
        config = component.config_from_dict(raw)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{config_path}: {e}") from None
    return _Prepared(component, config, TensorSource(weight_paths(folder, component.weights_name, variant)))


def read_pipeline_configs(folder: str) -> dict | None:
    """The weight-free parts of a pipeline folder, as JSON to carry in the checkpoint; None for a component folder.

    {"model_index": {...}, "files": {"scheduler/scheduler_config.json": {...},
    "feature_extractor/preprocessor_config.json": {...}}}
    """
    if not is_pipeline_folder(folder):
        return None
    index_path = os.path.join(folder, MODEL_INDEX)
    model_index = read_json_object(index_path)
    files = {}
    for name, entry in model_index.items():
        if name.startswith("_") or name in PIPELINE_COMPONENTS:
            continue
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise CheckpointError(f"{index_path}: entry {name!r} is not a [library, class] pair")
        if entry[0] is None or entry[1] is None:  # an optional component the pipeline does not use
            continue
        if name not in PIPELINE_CONFIG_FILES:
            raise CheckpointError(f"{index_path}: lists a {name!r} component ({entry[1]}) that sfv-jax does not carry; "
                                  f"a Stable Video Diffusion pipeline has "
                                  f"{', '.join([*PIPELINE_COMPONENTS, *PIPELINE_CONFIG_FILES])}")
        sub = os.path.join(folder, name)
        if not os.path.isdir(sub):
            raise CheckpointError(f"{sub}: folder not found; {MODEL_INDEX} lists {name} ({entry[1]})")
        relative = f"{name}/{PIPELINE_CONFIG_FILES[name]}"
        files[relative] = read_json_object(os.path.join(folder, relative))
    return {"model_index": model_index, "files": files}


def load_diffusers_folder(folder: str, variant: str | None = None, options: ModelOptions = ModelOptions(),
                          progress: bool = False, place: Callable | None = None) -> dict[str, nnx.Module]:
    """{name: module} from a pipeline folder (model_index.json) or a single component folder.

    Every component is checked (config, weight headers, tensor names and shapes) before any weight
    is read. `place(flax_key, array)` puts each converted array where it belongs (see import_params).
    """
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: folder not found")
    if not is_pipeline_folder(folder):
        prepared = _prepare(folder, variant)
        prepared.plan(options)
        name = next(n for n, c in PIPELINE_COMPONENTS.items() if c == prepared.component.class_name)
        return {name: prepared.convert(place, progress)}
    index_path = os.path.join(folder, MODEL_INDEX)
    model_index = read_json_object(index_path)
    prepared = {}
    for name, expected_class in PIPELINE_COMPONENTS.items():
        sub = os.path.join(folder, name)
        if not os.path.isdir(sub):
            raise CheckpointError(f"{sub}: folder not found; a Stable Video Diffusion pipeline folder holds "
                                  f"{', '.join(PIPELINE_COMPONENTS)}")
        if name not in model_index:
            raise CheckpointError(f"{index_path}: does not list {name}; a Stable Video Diffusion pipeline holds "
                                  f"{', '.join(PIPELINE_COMPONENTS)}")
        prepared[name] = _prepare(sub, variant, expected_class, name)
    for p in prepared.values():  # every folder is sound: now the model shapes (slower) and every tensor's place
        p.plan(options)
    return {name: p.convert(place, progress) for name, p in prepared.items()}


def _write_json(path: str, value: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")


def write_diffusers_folder(modules: dict[str, nnx.Module], folder: str, dtype=None,
                           pipeline: dict | None = None) -> None:
    """One module and no `pipeline`: a component folder; else a folder with one sub-folder per module.

    `pipeline` (what read_pipeline_configs returned at conversion) adds model_index.json and the
    scheduler and feature extractor configs, making a pipeline folder diffusers loads. All or nothing:
    on any error `folder` is not created.
    """
    if pipeline is None and len(modules) == 1:
        (module,) = modules.values()
        component_for_module(module).to_diffusers(module, folder, dtype)
        return
    if pipeline is not None:
        missing = [n for n in PIPELINE_COMPONENTS if n in pipeline["model_index"] and n not in modules]
        if missing:
            raise CheckpointError(f"cannot write a pipeline folder without {', '.join(missing)}")
    with atomic_directory(folder) as tmp:
        for name, module in modules.items():
            component_for_module(module).to_diffusers(module, os.path.join(tmp, name), dtype)
        if pipeline is not None:
            _write_json(os.path.join(tmp, MODEL_INDEX), pipeline["model_index"])
            for relative, value in pipeline["files"].items():
                _write_json(os.path.join(tmp, *relative.split("/")), value)
