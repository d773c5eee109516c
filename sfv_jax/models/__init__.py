"""Flax NNX ports of the Stable Video Diffusion models, channels-last."""

from sfv_jax.models.options import ModelOptions
from sfv_jax.models.unet import UNetSpatioTemporalConditionModel
from sfv_jax.models.unet_config import UNetConfig

__all__ = ["ModelOptions", "UNetConfig", "UNetSpatioTemporalConditionModel"]

from sfv_jax.models.clip import CLIPVisionConfig, CLIPVisionModelWithProjection  # noqa: E402
from sfv_jax.models.vae import AutoencoderKLTemporalDecoder, VAEConfig  # noqa: E402

__all__ += ["AutoencoderKLTemporalDecoder", "VAEConfig", "CLIPVisionConfig", "CLIPVisionModelWithProjection"]
