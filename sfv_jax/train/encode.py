"""Video frames -> the train step's batch, with the frozen VAE and CLIP encoders (on-the-fly encoding).

The conditioning follows SVD's pipeline: CLIP embeds the clean first frame; the VAE encodes the
first frame plus noise_aug_strength * N(0, 1) noise (its latent is used unscaled); the clip's latents
are the VAE latent means of every frame times `latent_scale`. VAE means rather than samples keep
the targets deterministic per clip (the posterior std of SVD's VAE is tiny).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from sfv_jax.diffusion.image_to_video import encode_condition, encode_image, micro_conditioning
from sfv_jax.train.state import SFVModels


def frames_to_unit_range(frames: jax.Array) -> jax.Array:
    """uint8 frames in [0, 255] -> float32 in [-1, 1]."""
    return frames.astype(jnp.float32) / 127.5 - 1.0


def make_encode_fn(config, models: SFVModels, drawn_noise_aug: bool = False
                   ) -> Callable[[dict, jax.Array, jax.Array], dict]:
    """encode(encoders, frames, key) -> batch for sfv_jax.train.step (and the denoise step).

    Args:
      encoders: {"vae": params, "image_encoder": params} (TrainState.encoders).
      frames: (B, T, H, W, 3) uint8 video clips.
      key: PRNG key of the conditioning frame's noise augmentation.
    drawn_noise_aug: each clip's augmentation strength is drawn, ln(s) ~ N(denoise.noise_aug_p_mean,
      denoise.noise_aug_p_std^2), and given to the UNet in added_time_ids (so a denoiser learns every
      strength a user may sample with); else every clip uses sfv.noise_aug_strength.
    Returns:
      {"latents" (B, T, H/8, W/8, 4), "image_latent" (B, H/8, W/8, 4), "clip" (B, 1, D),
       "added_time_ids" (B, 3)}, float32.
    """
    if models.encoders is None:
        raise ValueError("on-the-fly encoding needs `vae` and `image_encoder` sections in the config")
    sfv = config.sfv
    scale = config.data.latent_scale

    def encode(encoders, frames, key):
        vae = models.vae(encoders["vae"])
        clip = models.image_encoder(encoders["image_encoder"])
        video = frames_to_unit_range(frames)
        batch, num_frames, height, width, _ = video.shape
        latents = vae.encode(video.reshape(batch * num_frames, height, width, 3)).astype(jnp.float32)
        latents = latents.reshape(batch, num_frames, *latents.shape[1:]) * scale
        first = video[:, 0]
        noise_key, strength_key = key, jax.random.fold_in(key, 1)  # the sfv batch's noise as before
        if drawn_noise_aug:
            aug = config.denoise
            strength = jnp.exp(aug.noise_aug_p_mean + aug.noise_aug_p_std * jax.random.normal(strength_key, (batch,)))
        else:
            strength = jnp.full((batch,), sfv.noise_aug_strength, jnp.float32)
        image_latent = encode_condition(vae, first, jax.random.normal(noise_key, first.shape, first.dtype),
                                        strength[:, None, None, None])
        time_ids = micro_conditioning(sfv.fps, sfv.motion_bucket_id, 0.0, batch).at[:, 2].set(strength)
        return dict(latents=latents, image_latent=image_latent, clip=encode_image(clip, first),
                    added_time_ids=time_ids)

    return encode
