"""Random-weight SVD pipelines from a config file: the demo's models, benchmarks at any width."""

from __future__ import annotations

import ml_collections
from flax import nnx

from sfv_jax.models.clip import CLIPVisionConfig, CLIPVisionModelWithProjection
from sfv_jax.models.options import ModelOptions
from sfv_jax.models.random_init import random_module
from sfv_jax.models.unet import UNetSpatioTemporalConditionModel
from sfv_jax.models.unet_config import UNetConfig
from sfv_jax.models.vae import AutoencoderKLTemporalDecoder, VAEConfig


def random_components(config: ml_collections.ConfigDict, seed: int = 0,
                      options: ModelOptions | None = None) -> dict[str, nnx.Module]:
    """{"unet", "vae", "image_encoder"} with torch-default random weights, built from config.unet,
    config.vae and config.image_encoder (configs/tiny.py, configs/svd_xt.py, ...)."""
    options = options or ModelOptions(**config.model.to_dict())
    unet_config = UNetConfig.from_dict(config.unet.to_dict())
    vae_config = VAEConfig.from_dict(config.vae.to_dict())
    clip_config = CLIPVisionConfig.from_dict(config.image_encoder.to_dict())
    return {
        "unet": random_module(lambda rngs: UNetSpatioTemporalConditionModel(unet_config, options, rngs=rngs), seed),
        "vae": random_module(lambda rngs: AutoencoderKLTemporalDecoder(vae_config, options, rngs=rngs), seed + 1),
        "image_encoder": random_module(
            lambda rngs: CLIPVisionModelWithProjection(clip_config, options, rngs=rngs), seed + 2),
    }
