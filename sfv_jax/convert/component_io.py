"""Loading one component folder (config.json + safetensors) into its Flax module: the steps every
model shares, parametrised by the model's config class, constructor, rulebook and file name."""

from __future__ import annotations

from typing import Any, Callable

from flax import nnx

from sfv_jax.convert.engine import import_params
from sfv_jax.convert.weight_files import TensorSource, read_config, weight_paths
from sfv_jax.errors import CheckpointError
from sfv_jax.models.nnx_state import AbstractModel
from sfv_jax.models.options import ModelOptions


def config_from_folder(folder: str, config_from_dict: Callable[[dict], Any]):
    """Parses `folder`/config.json with a strict config reader; its errors name the file."""
    config = read_config(folder)
    try:
        return config_from_dict(config)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{folder}/config.json: {e}") from None


def module_from_folder(folder: str, config_from_dict: Callable[[dict], Any], module_type: type, rules,
                       weights_name: str, options: ModelOptions, variant: str | None, place: Callable | None,
                       progress: bool) -> nnx.Module:
    """Builds `module_type(config, options)` abstractly and fills every parameter from the folder.

    Every tensor must map to a parameter of the right shape and every parameter must be filled;
    otherwise a CheckpointError lists all problems. Weights are cast to options.param_dtype.
    """
    config = config_from_folder(folder, config_from_dict)
    model = AbstractModel(lambda rngs: module_type(config, options, rngs=rngs))
    source = TensorSource(weight_paths(folder, weights_name, variant))
    return model.merge(import_params(source, rules, model.shapes, module_type.__name__, place, progress))
