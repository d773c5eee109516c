"""Strict, reversible conversion between diffusers (PyTorch) checkpoints and sfv-jax modules."""

from sfv_jax.convert.unet import unet_from_diffusers, unet_to_diffusers

__all__ = ["unet_from_diffusers", "unet_to_diffusers"]
