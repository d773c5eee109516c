"""Flax NNX ports of the Stable Video Diffusion models, channels-last."""

from sfv_jax.models.options import ModelOptions
from sfv_jax.models.unet import UNetSpatioTemporalConditionModel
from sfv_jax.models.unet_config import UNetConfig

__all__ = ["ModelOptions", "UNetConfig", "UNetSpatioTemporalConditionModel"]
