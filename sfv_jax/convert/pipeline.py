"""Converting a diffusers folder (one component, or a whole pipeline) to and from an sfv-jax checkpoint."""

from __future__ import annotations

import json
import os

from flax import nnx

from sfv_jax.convert.components import PIPELINE_COMPONENTS, component_for_config
from sfv_jax.convert.weight_files import read_config
from sfv_jax.errors import CheckpointError
from sfv_jax.fileio import atomic_directory
from sfv_jax.models import ModelOptions


def load_diffusers_folder(folder: str, variant: str | None = None, options: ModelOptions = ModelOptions(),
                          progress: bool = False) -> dict[str, nnx.Module]:
    """{name: module} from a pipeline folder (model_index.json) or a single component folder."""
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: folder not found")
    index_path = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index_path):
        config = read_config(folder)
        component = component_for_config(config, os.path.join(folder, "config.json"))
        name = next(n for n, c in PIPELINE_COMPONENTS.items() if c == component.class_name)
        return {name: component.from_diffusers(folder, options=options, variant=variant, progress=progress)}
    try:
        with open(index_path) as f:
            model_index = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{index_path}: not valid JSON ({e})") from None
    modules = {}
    for name, expected_class in PIPELINE_COMPONENTS.items():
        sub = os.path.join(folder, name)
        if name not in model_index or not os.path.isdir(sub):
            raise CheckpointError(f"{folder}: pipeline has no {name}/ folder; a Stable Video Diffusion pipeline "
                                  f"folder holds {', '.join(PIPELINE_COMPONENTS)}")
        component = component_for_config(read_config(sub), os.path.join(sub, "config.json"))
        if component.class_name != expected_class:
            raise CheckpointError(f"{sub}/config.json: holds a {component.class_name}, expected {expected_class}")
        modules[name] = component.from_diffusers(sub, options=options, variant=variant, progress=progress)
    return modules


def write_diffusers_folder(modules: dict[str, nnx.Module], folder: str, dtype=None) -> None:
    """One module: a component folder; several: a pipeline folder with one sub-folder each."""
    from sfv_jax.convert.components import COMPONENTS
    if len(modules) == 1:
        (module,) = modules.values()
        COMPONENTS[module.config.to_diffusers_dict()["_class_name"]].to_diffusers(module, folder, dtype)
        return
    with atomic_directory(folder) as tmp:
        for name, module in modules.items():
            COMPONENTS[module.config.to_diffusers_dict()["_class_name"]].to_diffusers(
                module, os.path.join(tmp, name), dtype)
