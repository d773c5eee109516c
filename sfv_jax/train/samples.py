"""Periodic one-step samples during training: G's EMA weights turn a data frame into a clip.

One jitted program over the global (possibly sharded) arrays, so every process of a multi-host run
calls it together; process 0 writes the GIF. The noise is fixed per run, so successive samples show
how G changes, not how the noise does.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sfv_jax.diffusion import edm
from sfv_jax.diffusion.sampler import sfv_sample
from sfv_jax.models.clip_preprocess import preprocess_for_clip
from sfv_jax.train.encode import frames_to_unit_range
from sfv_jax.train.state import SFVModels


def make_sample_fn(config, models: SFVModels) -> Callable[[dict, dict, jax.Array, jax.Array], jax.Array]:
    """sample(g_params, encoders, first_frames, key) -> uint8 clips.

    first_frames: (B, H, W, 3) uint8 conditioning images; returns (B, T, H, W, 3) uint8, T = data.num_frames.
    """
    sfv, num_frames = config.sfv, config.data.num_frames

    def sample(g_params, encoders, first_frames, key):
        unet, vae = models.generator(g_params), models.vae(encoders["vae"])
        image = frames_to_unit_range(first_frames)
        batch = image.shape[0]
        aug_key, noise_key = jax.random.split(key)
        embeds = models.image_encoder(encoders["image_encoder"])(preprocess_for_clip(image))[:, None, :]
        image_latent = vae.encode(image + sfv.noise_aug_strength * jax.random.normal(aug_key, image.shape))
        image_latents = jnp.broadcast_to(image_latent[:, None], (batch, num_frames) + image_latent.shape[1:])
        noise = jax.random.normal(noise_key, image_latents.shape, jnp.float32)
        time_ids = jnp.tile(jnp.asarray([[sfv.fps - 1, sfv.motion_bucket_id, sfv.noise_aug_strength]],
                                        jnp.float32), (batch, 1))
        latents = noise * edm.init_noise_sigma(sfv.sigma_max)
        levels = jnp.asarray([sfv.sigma_max], jnp.float32)
        x0 = sfv_sample(unet, latents, levels, jnp.zeros((0,) + latents.shape), image_latents,
                        embeds.astype(jnp.float32), time_ids)
        flat = (x0 / config.data.latent_scale).reshape(batch * num_frames, *x0.shape[2:])
        frames = vae.decode(flat, num_frames).astype(jnp.float32)
        frames = jnp.clip((frames + 1.0) * 127.5 + 0.5, 0, 255).astype(jnp.uint8)
        return frames.reshape(batch, num_frames, *frames.shape[1:])

    return sample


def to_host(frames: jax.Array) -> np.ndarray:
    """A (possibly multi-host) global array as one numpy array on every process."""
    from jax.experimental import multihost_utils
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(frames, tiled=True))
    return np.asarray(frames)
