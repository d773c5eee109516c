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
from sfv_jax.diffusion.image_to_video import decode, encode_condition, encode_image, micro_conditioning, one_step_video
from sfv_jax.diffusion.sampler import euler_sample
from sfv_jax.train.encode import frames_to_unit_range
from sfv_jax.train.state import SFVModels


def make_sample_fn(config, models: SFVModels) -> Callable[[dict, dict, jax.Array, jax.Array], jax.Array]:
    """sample(g_params, encoders, first_frames, key) -> uint8 clips.

    first_frames: (B, H, W, 3) uint8 conditioning images; returns (B, T, H, W, 3) uint8, T = data.num_frames.
    """
    sfv = config.sfv

    def sample(g_params, encoders, first_frames, key):
        frames = one_step_video(models.generator(g_params), models.vae(encoders["vae"]),
                                models.image_encoder(encoders["image_encoder"]), frames_to_unit_range(first_frames),
                                key, config.data.num_frames, sfv.sigma_max, sfv.fps, sfv.motion_bucket_id,
                                sfv.noise_aug_strength)
        return jnp.round(frames * 255).astype(jnp.uint8)

    return sample


def make_euler_sample_fn(config, models: SFVModels, num_steps: int
                         ) -> Callable[[dict, dict, jax.Array, jax.Array], jax.Array]:
    """sample(unet_params, encoders, first_frames, key) -> uint8 clips (B, T, H, W, 3), by SVD's Euler sampler
    over `num_steps` Karras levels without guidance (the denoise objective's periodic samples)."""
    sfv = config.sfv

    def sample(unet_params, encoders, first_frames, key):
        vae, unet = models.vae(encoders["vae"]), models.generator(unet_params)
        images = frames_to_unit_range(first_frames)
        batch, frames = images.shape[0], config.data.num_frames
        aug_key, noise_key = jax.random.split(key)
        image_latent = encode_condition(vae, images, jax.random.normal(aug_key, images.shape), sfv.noise_aug_strength)
        image_latents = jnp.broadcast_to(image_latent[:, None], (batch, frames) + image_latent.shape[1:])
        schedule = edm.NoiseSchedule(sigma_min=sfv.sigma_min, sigma_max=sfv.sigma_max, rho=sfv.rho)
        latents = jax.random.normal(noise_key, image_latents.shape) * schedule.init_noise_sigma
        x0 = euler_sample(unet, latents, jnp.asarray(schedule.sigmas(num_steps)), image_latents,
                          encode_image(models.image_encoder(encoders["image_encoder"]), images),
                          micro_conditioning(sfv.fps, sfv.motion_bucket_id, sfv.noise_aug_strength, batch))
        clips = decode(vae, x0.reshape(batch * frames, *x0.shape[2:]), frames)
        return jnp.round(clips.reshape(batch, frames, *clips.shape[1:]) * 255).astype(jnp.uint8)

    return sample


def to_host(frames: jax.Array) -> np.ndarray:
    """A (possibly multi-host) global array as one numpy array on every process."""
    from jax.experimental import multihost_utils
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(frames, tiled=True))
    return np.asarray(frames)
