"""Flax NNX port of diffusers' AutoencoderKLTemporalDecoder (the SVD VAE), channels-last."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from sfv_jax.models.diffusers_config import dataclass_from_diffusers, dataclass_to_diffusers
from sfv_jax.models.layers import conv
from sfv_jax.models.options import ModelOptions
from sfv_jax.models.vae_blocks import Encoder, TemporalDecoder

DIFFUSERS_CLASS_NAME = "AutoencoderKLTemporalDecoder"
DOWN_BLOCK_TYPE = "DownEncoderBlock2D"
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamps logvar to this


def downsampling_factor(block_out_channels) -> int:
    """Image pixels per latent pixel along H and W: every down block but the last halves them (SVD's four: 8).

    Takes the block_out_channels of a VAEConfig or of a config's ml_collections `vae` section alike.
    """
    return 2 ** (len(block_out_channels) - 1)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Fields and defaults of diffusers' AutoencoderKLTemporalDecoder.__init__.

    The defaults are diffusers' class defaults (what a config.json without the key means), not
    SVD's: SVD-XT uses block_out_channels (128, 256, 512, 512), four down blocks and
    layers_per_block 2. sample_size and force_upcast do not change the maths; they round-trip.
    """

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = (DOWN_BLOCK_TYPE,)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    latent_channels: int = 4
    sample_size: int = 32
    scaling_factor: float = 0.18215
    force_upcast: bool = True

    def __post_init__(self):
        if len(self.down_block_types) != len(self.block_out_channels):
            raise ValueError(f"down_block_types and block_out_channels must have the same length, got "
                             f"{len(self.down_block_types)} and {len(self.block_out_channels)}")
        bad = [t for t in self.down_block_types if t != DOWN_BLOCK_TYPE]
        if bad:
            raise ValueError(f"unsupported down block types {bad}; AutoencoderKLTemporalDecoder uses {DOWN_BLOCK_TYPE}")
        if any(c % 32 for c in self.block_out_channels):
            raise ValueError(f"block_out_channels {self.block_out_channels} must be multiples of 32 (GroupNorm groups)")
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block must be >= 1, got {self.layers_per_block}")

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "VAEConfig":
        """From a diffusers config.json dict (or an ml_collections dict); unknown keys are an error."""
        return dataclass_from_diffusers(cls, config, DIFFUSERS_CLASS_NAME, "VAE")

    def to_diffusers_dict(self) -> dict[str, Any]:
        """The config.json diffusers writes for this model."""
        return dataclass_to_diffusers(self, DIFFUSERS_CLASS_NAME)


class AutoencoderKLTemporalDecoder(nnx.Module):
    """SVD's VAE: a per-image KL encoder and a decoder that mixes the frames of a clip.

    Images are (N, H, W, 3) in [-1, 1]; latents (N, H/8, W/8, latent_channels) are unscaled, as
    diffusers' encode returns and decode takes them (multiply by config.scaling_factor for the UNet).
    """

    def __init__(self, config: VAEConfig, options: ModelOptions = ModelOptions(), *, rngs: nnx.Rngs):
        self.config = config
        self.options = options
        self.encoder = Encoder(config.in_channels, config.latent_channels, config.block_out_channels,
                               config.layers_per_block, options, rngs)
        self.quant_conv = conv(2 * config.latent_channels, 2 * config.latent_channels, (1, 1), options, rngs)
        self.decoder = TemporalDecoder(config.latent_channels, config.out_channels, config.block_out_channels,
                                       config.layers_per_block, options, rngs)

    def latent_dist(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images (N, H, W, in_channels) -> (mean, logvar), each (N, h, w, latent_channels).

        logvar is clamped to [-30, 20] as diffusers' DiagonalGaussianDistribution does.
        """
        moments = self.quant_conv(self.encoder(images.astype(self.options.compute_dtype)))
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    def encode(self, images: jax.Array) -> jax.Array:
        """images (N, H, W, 3) in [-1, 1] -> the latent mean (N, h, w, 4): latent_dist.mode() in diffusers."""
        return self.latent_dist(images)[0]

    def sample(self, images: jax.Array, rng: jax.Array) -> jax.Array:
        """A draw mean + exp(logvar / 2) * eps from the posterior of each image, eps ~ N(0, 1) from `rng`."""
        mean, logvar = self.latent_dist(images)
        eps = jax.random.normal(rng, mean.shape, jnp.float32)
        std = jnp.exp(0.5 * logvar.astype(jnp.float32))
        return (mean.astype(jnp.float32) + std * eps).astype(mean.dtype)

    def decode(self, latents: jax.Array, num_frames: int, decode_chunk_size: int | None = None) -> jax.Array:
        """latents (N, h, w, 4), unscaled -> frames (N, 8h, 8w, 3), roughly in [-1, 1].

        decode_chunk_size=None: N = B * num_frames frames of B clips, each clip decoded with its
        own frames only (diffusers' vae.decode(z, num_frames)); clips are decoded one at a time.
        decode_chunk_size=c: the chunking of diffusers' pipeline decode_latents. The N frames are
        cut into chunks of c (the last may be shorter) and each chunk is decoded as one clip of
        len(chunk) frames, so temporal layers see only the frames in the chunk (and a chunk may
        span two clips when B > 1, as in diffusers). num_frames is then not used by the maths.
        Chunks run one after another (lax.scan), so only one chunk's activations are live; the
        decode is jitted internally (compiled once per latent shape and chunking).
        """
        n = latents.shape[0]
        if decode_chunk_size is None:
            if num_frames < 1 or n % num_frames:
                raise ValueError(f"{n} latent frames do not split into clips of num_frames={num_frames}")
            chunk = num_frames
        else:
            if decode_chunk_size < 1:
                raise ValueError(f"decode_chunk_size must be >= 1, got {decode_chunk_size}")
            chunk = min(decode_chunk_size, n)
        graphdef, state = nnx.split(self.decoder)
        return _decode_in_chunks(graphdef, state, latents.astype(self.options.compute_dtype), chunk)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _decode_in_chunks(graphdef: nnx.GraphDef, state: nnx.State, latents: jax.Array, chunk: int) -> jax.Array:
    """Decodes latents (N, h, w, C) as consecutive clips of `chunk` frames (the last may be shorter).

    Equal chunks go through lax.scan, a sequential loop, so one chunk's activations are live at a
    time even inside a caller's jit; the remainder is decoded after. Jitted here so that eager
    callers compile once per shape instead of re-tracing the loop body on every call.
    """
    decoder = nnx.merge(graphdef, state)
    n = latents.shape[0]
    full, rest = divmod(n, chunk)
    outputs = []
    if full == 1:
        outputs.append(decoder(latents[:chunk], chunk))
    elif full > 1:
        head = latents[:full * chunk].reshape(full, chunk, *latents.shape[1:])
        # The params ride along as the scan carry rather than a closure: NNX transforms inside the
        # body (remat) may only touch Variables created at the body's own trace level.
        step = lambda params, z: (params, nnx.merge(graphdef, params)(z, chunk))
        _, decoded = jax.lax.scan(step, state, head)
        outputs.append(decoded.reshape(full * chunk, *decoded.shape[2:]))
    if rest:
        outputs.append(decoder(latents[full * chunk:], rest))
    return outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=0)
