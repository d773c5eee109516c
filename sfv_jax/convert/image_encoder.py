"""transformers CLIPVisionModelWithProjection folder (SVD's image_encoder/) <-> sfv-jax image encoder."""

from __future__ import annotations

from typing import Callable

import numpy as np

from sfv_jax.convert.clip_rules import CLIP_RULES
from sfv_jax.convert.component_io import module_from_folder
from sfv_jax.convert.writer import write_diffusers_component
from sfv_jax.models.clip import CLIPVisionConfig, CLIPVisionModelWithProjection
from sfv_jax.models.nnx_state import AbstractModel
from sfv_jax.models.options import ModelOptions

WEIGHTS_NAME = "model"  # transformers' file name (model.safetensors), not diffusers'


def abstract_image_encoder(config: CLIPVisionConfig, options: ModelOptions) -> AbstractModel:
    return AbstractModel(lambda rngs: CLIPVisionModelWithProjection(config, options, rngs=rngs))


def image_encoder_from_diffusers(folder: str, options: ModelOptions = ModelOptions(), variant: str | None = None,
                                 place: Callable | None = None, progress: bool = False) -> CLIPVisionModelWithProjection:
    """Loads an `image_encoder/` folder (transformers config.json + model.safetensors) into the Flax encoder.

    Every tensor must map to a parameter of the right shape and every parameter must be filled;
    otherwise a CheckpointError lists all problems. Weights are cast to options.param_dtype.
    """
    return module_from_folder(folder, CLIPVisionConfig.from_dict, CLIPVisionModelWithProjection, CLIP_RULES, WEIGHTS_NAME, options,
                              variant, place, progress)


def image_encoder_to_diffusers(image_encoder: CLIPVisionModelWithProjection, folder: str,
                               dtype: np.dtype | None = None) -> None:
    """Writes `image_encoder` as a transformers folder (config.json + model.safetensors)."""
    stored = np.dtype(dtype) if dtype is not None else np.dtype(image_encoder.options.param_dtype)
    config = image_encoder.config.to_transformers_dict(dtype=stored.name)
    write_diffusers_component(image_encoder, config, CLIP_RULES, folder, WEIGHTS_NAME, dtype)
