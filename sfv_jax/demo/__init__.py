"""`sfv-jax demo`: a shipped toy model makes a video in one UNet call (shipped.py, what `make demo` runs), or the
random-weights convert -> train -> export journey (journey.py, `sfv-jax demo --journey`)."""

from sfv_jax.demo.images import synthetic_image

__all__ = ["synthetic_image"]
