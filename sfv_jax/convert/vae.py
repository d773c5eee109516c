"""diffusers AutoencoderKLTemporalDecoder folder <-> sfv-jax VAE."""

from __future__ import annotations

from typing import Callable

import numpy as np

from sfv_jax.convert.engine import import_params
from sfv_jax.convert.module_state import AbstractModel
from sfv_jax.convert.vae_rules import VAE_RULES
from sfv_jax.convert.weight_files import TensorSource, read_config, weight_paths
from sfv_jax.convert.writer import write_diffusers_component
from sfv_jax.errors import CheckpointError
from sfv_jax.models.options import ModelOptions
from sfv_jax.models.vae import AutoencoderKLTemporalDecoder, VAEConfig

WEIGHTS_NAME = "diffusion_pytorch_model"


def vae_config_from_folder(folder: str) -> VAEConfig:
    config = read_config(folder)
    try:
        return VAEConfig.from_dict(config)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{folder}/config.json: {e}") from None


def abstract_vae(config: VAEConfig, options: ModelOptions) -> AbstractModel:
    return AbstractModel(lambda rngs: AutoencoderKLTemporalDecoder(config, options, rngs=rngs))


def vae_from_diffusers(folder: str, options: ModelOptions = ModelOptions(), variant: str | None = None,
                       place: Callable | None = None, progress: bool = False) -> AutoencoderKLTemporalDecoder:
    """Loads a diffusers `vae/` folder (config.json + safetensors) into the Flax VAE.

    Every tensor must map to a parameter of the right shape and every parameter must be filled;
    otherwise a CheckpointError lists all problems. Weights are cast to options.param_dtype.
    """
    config = vae_config_from_folder(folder)
    model = abstract_vae(config, options)
    source = TensorSource(weight_paths(folder, WEIGHTS_NAME, variant))
    params = import_params(source, VAE_RULES, model.shapes, "AutoencoderKLTemporalDecoder", place, progress)
    return model.merge(params)


def vae_to_diffusers(vae: AutoencoderKLTemporalDecoder, folder: str, dtype: np.dtype | None = None) -> None:
    """Writes `vae` as a diffusers folder (config.json + diffusion_pytorch_model.safetensors)."""
    write_diffusers_component(vae, vae.config.to_diffusers_dict(), VAE_RULES, folder, WEIGHTS_NAME, dtype)
