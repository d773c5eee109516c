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


def make_condition_fn(config, drawn_noise_aug: bool = False
                      ) -> Callable[[object, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """condition(vae, first, key) -> (image_latent (B, h, w, 4), added_time_ids (B, 3)): the noise-augmented
    conditioning latent of first frames `first` (B, H, W, 3) in [-1, 1], and the micro-conditioning that states its
    noise strength.

    drawn_noise_aug: each clip's augmentation strength is drawn, ln(s) ~ N(denoise.noise_aug_p_mean,
      denoise.noise_aug_p_std^2), and given to the UNet in added_time_ids (so a denoiser learns every
      strength a user may sample with); else every clip uses sfv.noise_aug_strength.
    """
    sfv = config.sfv

    def condition(vae, first, key):
        batch = first.shape[0]
        noise_key, strength_key = key, jax.random.fold_in(key, 1)
        if drawn_noise_aug:
            aug = config.denoise
            strength = jnp.exp(aug.noise_aug_p_mean + aug.noise_aug_p_std * jax.random.normal(strength_key, (batch,)))
        else:
            strength = jnp.full((batch,), sfv.noise_aug_strength, jnp.float32)
        image_latent = encode_condition(vae, first, jax.random.normal(noise_key, first.shape, first.dtype),
                                        strength[:, None, None, None])
        time_ids = micro_conditioning(sfv.fps, sfv.motion_bucket_id, 0.0, batch).at[:, 2].set(strength)
        return image_latent, time_ids

    return condition


def make_encode_fn(config, models: SFVModels, drawn_noise_aug: bool = False
                   ) -> Callable[[dict, jax.Array, jax.Array], dict]:
    """encode(encoders, frames, key) -> batch for sfv_jax.train.step (and the denoise step).

    Args:
      encoders: {"vae": params, "image_encoder": params} (TrainState.encoders).
      frames: (B, T, H, W, 3) uint8 video clips.
      key: PRNG key of the conditioning frame's noise augmentation.
    drawn_noise_aug: as make_condition_fn.
    Returns:
      {"latents" (B, T, h, w, 4), "image_latent" (B, h, w, 4), "clip" (B, 1, D), "added_time_ids" (B, 3)},
      float32 (h, w: H, W over the VAE's downsampling).
    """
    if models.encoders is None:
        raise ValueError("on-the-fly encoding needs `vae` and `image_encoder` sections in the config")
    scale = config.data.latent_scale
    condition = make_condition_fn(config, drawn_noise_aug)

    def encode(encoders, frames, key):
        vae = models.vae(encoders["vae"])
        clip = models.image_encoder(encoders["image_encoder"])
        video = frames_to_unit_range(frames)
        batch, num_frames, height, width, _ = video.shape
        latents = vae.encode(video.reshape(batch * num_frames, height, width, 3)).astype(jnp.float32)
        latents = latents.reshape(batch, num_frames, *latents.shape[1:]) * scale
        first = video[:, 0]
        image_latent, time_ids = condition(vae, first, key)
        return dict(latents=latents, image_latent=image_latent, clip=encode_image(clip, first),
                    added_time_ids=time_ids)

    return encode


def make_recondition_fn(config, models: SFVModels, drawn_noise_aug: bool = False
                        ) -> Callable[[dict, dict, jax.Array], dict]:
    """recondition(encoders, cached, key) -> batch: a latent cache's rows (sfv_jax.data.latent_cache, with its
    first_frame key) with the conditioning drawn afresh, as make_encode_fn would draw it for the same key.

    The clip's latents and CLIP embedding are the cache's (they draw nothing); only the first frame
    (B, H, W, 3) uint8 goes through the VAE again, with this step's noise (and strength, when drawn), so a
    cached run sees new conditioning noise every step at one frame's encoding cost instead of T's.
    """
    if models.encoders is None:
        raise ValueError("re-encoding the conditioning frame needs `vae` and `image_encoder` sections in the config")
    condition = make_condition_fn(config, drawn_noise_aug)

    def recondition(encoders, cached, key):
        image_latent, time_ids = condition(models.vae(encoders["vae"]), frames_to_unit_range(cached["first_frame"]),
                                           key)
        return dict(latents=cached["latents"], image_latent=image_latent, clip=cached["clip"],
                    added_time_ids=time_ids)

    return recondition
