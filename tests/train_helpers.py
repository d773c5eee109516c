"""Shared pieces of the training tests: the micro config, batches, and per-leaf comparisons of states."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sfv_jax.config import load_config
from sfv_jax.data.synthetic import SyntheticVideos

def micro_config(*overrides: str):
    """configs/tiny_sfv.py:micro (one cross-attention block with one layer: every layer type of the UNet and the
    discriminator in the smallest XLA program) with overrides."""
    return load_config("configs/tiny_sfv.py:micro", list(overrides))


def make_batch(config, batch: int | None = None, height: int = 8, width: int = 8, seed: int = 0) -> dict:
    """Random batch: latents (B,T,h,w,4), image_latent (B,h,w,4), clip (B,1,D), added_time_ids (B,3)."""
    rng = np.random.default_rng(seed)
    b = batch or config.global_batch_size
    sfv = config.sfv
    return dict(
        latents=jnp.asarray(0.5 * rng.standard_normal((b, config.data.num_frames, height, width, 4)), jnp.float32),
        image_latent=jnp.asarray(rng.standard_normal((b, height, width, 4)), jnp.float32),
        clip=jnp.asarray(rng.standard_normal((b, 1, config.unet.cross_attention_dim)), jnp.float32),
        added_time_ids=jnp.asarray(np.tile([[sfv.fps - 1, sfv.motion_bucket_id, sfv.noise_aug_strength]], (b, 1)),
                                   jnp.float32))


def synthetic_batch(config, first: int, count: int, size: int = 8) -> dict:
    """A batch of latent-like clips made from the built-in moving-shapes videos first .. first + count - 1.

    Each (T, 8*size, 8*size, 3) clip is average-pooled 8x to (T, size, size, 3) (as a VAE shrinks it), centred,
    and a 4th channel holds its luminance; the image latent is frame 0 unscaled, the CLIP embedding a fixed random
    projection of the first frame's mean colour: no encoders to compile, structure (moving shapes) kept.
    """
    videos = SyntheticVideos(first + count, config.data.num_frames, 8 * size, 8 * size, seed=config.seed)
    clips = np.stack([videos.video(i) for i in range(first, first + count)]).astype(np.float32) / 127.5 - 1.0
    b, t = clips.shape[:2]
    pooled = clips.reshape(b, t, size, 8, size, 8, 3).mean(axis=(3, 5))
    latents = np.concatenate([pooled, pooled.mean(axis=-1, keepdims=True)], axis=-1)
    latents = 0.8 * (latents - latents.mean(axis=(1, 2, 3), keepdims=True))
    proj = np.random.default_rng(1).standard_normal((3, config.unet.cross_attention_dim)).astype(np.float32)
    sfv = config.sfv
    return dict(latents=jnp.asarray(latents), image_latent=jnp.asarray(latents[:, 0] / 0.8),
                clip=jnp.asarray(pooled[:, 0].mean(axis=(1, 2)) @ proj)[:, None, :],
                added_time_ids=jnp.asarray(np.tile([[sfv.fps - 1, sfv.motion_bucket_id, sfv.noise_aug_strength]],
                                                   (b, 1)), jnp.float32))


# Per leaf, relative to the leaf's own update: the two programs run the same float32 arithmetic in a different
# reduction order (partial sums per device, then an all-reduce), ~1e-7 relative per sum. What makes it visible
# is storage: a norm scale near 1 moved by an update of ~1e-3 (lr 1e-3, SM3's normalised step) is held to one
# float32 ulp, 1.2e-7, i.e. ~1e-4 of its update, so one rounding flip per element reaches that (measured worst:
# 6.4e-5 on 8 fake devices, 1.8e-4 for 2 processes x 2 devices, EMA and norm-scale leaves; every other leaf
# < 1e-5). The bound is 10x that resolution.
UPDATE_BOUND = 1e-3


def tree_equal(a, b) -> bool:
    """Same structure and bit-identical leaves."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(bool(np.array_equal(np.asarray(x), np.asarray(y))) for x, y in zip(la, lb))


def update_errors(init, a, b) -> list[tuple[float, str]]:
    """Per leaf of (init, a, b): ||(a - init) - (b - init)|| / ||b - init||, worst first, with the leaf's path.

    A leaf that b leaves unchanged counts as exact only if a leaves it unchanged too (error inf otherwise),
    so a zero update can never hide behind a zero denominator.
    """
    out = []
    flat_init = jax.tree_util.tree_flatten_with_path(init)[0]
    for (path, x0), xa, xb in zip(flat_init, jax.tree.leaves(a), jax.tree.leaves(b)):
        x0, xa, xb = (np.asarray(v, np.float64) for v in (x0, xa, xb))
        da, db = xa - x0, xb - x0
        norm_b, diff = np.linalg.norm(db), np.linalg.norm(da - db)
        rel = diff / norm_b if norm_b > 0 else (0.0 if diff == 0 else float("inf"))
        out.append((float(rel), jax.tree_util.keystr(path)))
    return sorted(out, reverse=True)


# The toy stack's configs (configs/toy.py) at micro sizes: a one-block UNet, a two-level VAE, 3 frames. The
# VAE keeps 2 channels per GroupNorm group: at 1 a resnet's conv1 bias (normalised away) gets no gradient, and
# Adam turns its rounding noise into full-size updates that no two runs share.
MICRO_TOY = ("unet.block_out_channels=(64,)", "unet.down_block_types=('CrossAttnDownBlockSpatioTemporal',)",
             "unet.up_block_types=('CrossAttnUpBlockSpatioTemporal',)", "unet.num_attention_heads=(2,)",
             "unet.num_frames=3", "vae.block_out_channels=(64, 64)",
             "vae.down_block_types=('DownEncoderBlock2D', 'DownEncoderBlock2D')", "data.num_frames=3",
             "data.height=32", "data.width=32", "global_batch_size=4", "grad_accum_steps=2", "log_every=1")


# XLA:CPU runs a convolution's gradient ~20x slower inside a lax.scan than outside one (sfv_jax.train.accumulate):
# the micro VAE step with 2 micro-batches takes ~20 s scanned, ~1 s unrolled. The VAE's micro configs unroll;
# both loops are checked against per-micro-batch gradients in tests/test_accumulate.py.
VAE_LOOP = ("micro_batch_loop=unroll",)
# The toy VAE's pooling start needs >= 4 channels per GroupNorm group in the encoder's last level, which the micro
# VAE's 64 channels (2 per group) lack: micro runs start from the identity start. tests/test_scratch_init.py checks
# the pooling start on VAEs wide enough for it.
MICRO_VAE_START = ("scratch_init=identity",)


def micro_toy_overrides(variant: str) -> tuple[str, ...]:
    """The overrides that make configs/toy.py:VARIANT micro: MICRO_TOY, and VAE_LOOP + MICRO_VAE_START for the vae
    variant."""
    return (*MICRO_TOY, *((*VAE_LOOP, *MICRO_VAE_START) if variant == "vae" else ()))


def micro_toy_config(variant: str, *overrides: str):
    """configs/toy.py:VARIANT at micro sizes (micro_toy_overrides), with overrides."""
    return load_config(f"configs/toy.py:{variant}", [*micro_toy_overrides(variant), *overrides])


def synthetic_video_batch(config, first: int, count: int) -> dict:
    """{"video": (count, T, H, W, 3) float32 in [-1, 1]}: the built-in moving-shapes videos first .. first+count-1."""
    videos = SyntheticVideos(first + count, config.data.num_frames, config.data.height, config.data.width,
                             seed=config.seed)
    clips = np.stack([videos.video(i) for i in range(first, first + count)]).astype(np.float32) / 127.5 - 1.0
    return {"video": jnp.asarray(clips)}
