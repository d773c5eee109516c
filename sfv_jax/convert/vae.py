"""diffusers AutoencoderKLTemporalDecoder folder <-> sfv-jax VAE."""

from __future__ import annotations

from typing import Callable

import numpy as np

from sfv_jax.convert.component_io import module_from_folder
from sfv_jax.convert.vae_rules import VAE_RULES
from sfv_jax.convert.writer import write_diffusers_component
from sfv_jax.models.nnx_state import AbstractModel
from sfv_jax.models.options import ModelOptions
from sfv_jax.models.vae import AutoencoderKLTemporalDecoder, VAEConfig

WEIGHTS_NAME = "diffusion_pytorch_model"


def abstract_vae(config: VAEConfig, options: ModelOptions) -> AbstractModel:
    return AbstractModel(lambda rngs: AutoencoderKLTemporalDecoder(config, options, rngs=rngs))


def vae_from_diffusers(folder: str, options: ModelOptions = ModelOptions(), variant: str | None = None,
                       place: Callable | None = None, progress: bool = False) -> AutoencoderKLTemporalDecoder:
    """Loads a diffusers `vae/` folder (config.json + safetensors) into the Flax VAE.

    Every tensor must map to a parameter of the right shape and every parameter must be filled;
    otherwise a CheckpointError lists all problems. Weights are cast to options.param_dtype.
    """
    return module_from_folder(folder, VAEConfig.from_dict, AutoencoderKLTemporalDecoder, VAE_RULES, WEIGHTS_NAME, options,
                              variant, place, progress)


def vae_to_diffusers(vae: AutoencoderKLTemporalDecoder, folder: str, dtype: np.dtype | None = None) -> None:
    """Writes `vae` as a diffusers folder (config.json + diffusion_pytorch_model.safetensors)."""
    write_diffusers_component(vae, vae.config.to_diffusers_dict(), VAE_RULES, folder, WEIGHTS_NAME, dtype)
