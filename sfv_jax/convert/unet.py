"""diffusers UNetSpatioTemporalConditionModel folder <-> sfv-jax UNet."""

from __future__ import annotations

from typing import Callable

import numpy as np

from sfv_jax.convert.component_io import module_from_folder
from sfv_jax.convert.unet_rules import UNET_RULES
from sfv_jax.convert.writer import write_diffusers_component
from sfv_jax.models import ModelOptions, UNetConfig, UNetSpatioTemporalConditionModel
from sfv_jax.models.nnx_state import AbstractModel

WEIGHTS_NAME = "diffusion_pytorch_model"


def abstract_unet(config: UNetConfig, options: ModelOptions) -> AbstractModel:
    return AbstractModel(lambda rngs: UNetSpatioTemporalConditionModel(config, options, rngs=rngs))


def unet_from_diffusers(folder: str, options: ModelOptions = ModelOptions(), variant: str | None = None,
                        place: Callable | None = None, progress: bool = False) -> UNetSpatioTemporalConditionModel:
    """Loads a diffusers `unet/` folder (config.json + safetensors) into the Flax UNet.

    Every tensor must map to a parameter of the right shape and every parameter must be filled;
    otherwise a CheckpointError lists all problems. Weights are cast to options.param_dtype.
    """
    return module_from_folder(folder, UNetConfig.from_dict, UNetSpatioTemporalConditionModel, UNET_RULES, WEIGHTS_NAME, options,
                              variant, place, progress)


def unet_to_diffusers(unet: UNetSpatioTemporalConditionModel, folder: str, dtype: np.dtype | None = None) -> None:
    """Writes `unet` as a diffusers folder (config.json + diffusion_pytorch_model.safetensors)."""
    write_diffusers_component(unet, unet.config.to_diffusers_dict(), UNET_RULES, folder, WEIGHTS_NAME, dtype)
