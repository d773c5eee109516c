"""sfv-jax: Stable Video Diffusion and SF-V one-step image-to-video in JAX/Flax."""

__version__ = "0.1.0"

__all__ = ["SFVPipeline"]


def __getattr__(name):
    # Lazy: `import sfv_jax` stays cheap (no jax/flax import) until SFVPipeline is used.
    if name == "SFVPipeline":
        from sfv_jax.pipeline import SFVPipeline
        return SFVPipeline
    raise AttributeError(f"module 'sfv_jax' has no attribute {name!r}")
