"""Strict, reversible conversion between diffusers (PyTorch) checkpoints and sfv-jax modules."""

from sfv_jax.convert.unet import unet_from_diffusers, unet_to_diffusers

__all__ = ["unet_from_diffusers", "unet_to_diffusers"]

from sfv_jax.convert.image_encoder import image_encoder_from_diffusers, image_encoder_to_diffusers  # noqa: E402
from sfv_jax.convert.vae import vae_from_diffusers, vae_to_diffusers  # noqa: E402

__all__ += ["vae_from_diffusers", "vae_to_diffusers", "image_encoder_from_diffusers", "image_encoder_to_diffusers"]
