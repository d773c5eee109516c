"""sfv-jax: Stable Video Diffusion and SF-V one-step image-to-video in JAX/Flax."""

__version__ = "0.1.0"
