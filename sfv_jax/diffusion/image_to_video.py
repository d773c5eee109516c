"""Image -> video with SVD's conditioning: the one definition of every stage, for the pipeline and for training.

SFVPipeline compiles and times each stage on its own (STAGES, in order); the training loop's periodic samples
and the on-the-fly encoder call the same functions inside their own jitted programs. The conditioning follows
diffusers' StableVideoDiffusionPipeline (docs/method.md section 1): CLIP embeds the clean image, the VAE encodes
the image plus noise_aug_strength * N(0, 1) and its latent mean is used unscaled, the micro-conditioning is
[fps - 1, motion_bucket_id, noise_aug_strength], and the final latents are divided by the VAE's scaling factor
before the temporal decoder.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sfv_jax.diffusion import edm
from sfv_jax.diffusion.sampler import sfv_sample
from sfv_jax.models.clip_preprocess import preprocess_for_clip

# The stages of one image -> video call, in order, and the pipeline component each one runs.
STAGES = ("image_encoder", "vae_encode", "unet", "vae_decode")
STAGE_MODULE = {"image_encoder": "image_encoder", "vae_encode": "vae", "unet": "unet", "vae_decode": "vae"}


def encode_image(image_encoder: nnx.Module, images: jax.Array) -> jax.Array:
    """images (B, H0, W0, 3) in [-1, 1], any size -> CLIP image embeddings (B, 1, D) float32."""
    return image_encoder(preprocess_for_clip(images)).astype(jnp.float32)[:, None, :]


def encode_condition(vae: nnx.Module, images: jax.Array, noise: jax.Array, strength) -> jax.Array:
    """Conditioning frames (B, H, W, 3) in [-1, 1] plus strength * noise -> VAE latent mean (B, h, w, 4), float32,
    unscaled (SVD concatenates it to the UNet input as it is)."""
    return vae.encode(images + strength * noise).astype(jnp.float32)


def micro_conditioning(fps, motion_bucket_id, noise_aug_strength, batch: int) -> jax.Array:
    """SVD's added_time_ids (B, 3) float32: [fps - 1, motion_bucket_id, noise_aug_strength] per clip."""
    return jnp.tile(jnp.asarray([[fps - 1, motion_bucket_id, noise_aug_strength]], jnp.float32), (batch, 1))


def decode(vae: nnx.Module, latents: jax.Array, num_frames: int, chunk: int | None = None) -> jax.Array:
    """Final latents (N, h, w, 4), N = clips * num_frames, scaled -> frames (N, H, W, 3) float32 in [0, 1]
    (diffusers' decode_latents, denormalize and clamp)."""
    frames = vae.decode(latents * (1 / vae.config.scaling_factor), num_frames, chunk).astype(jnp.float32)
    return jnp.clip(frames / 2 + 0.5, 0.0, 1.0)


def one_step_video(unet: nnx.Module, vae: nnx.Module, image_encoder: nnx.Module, images: jax.Array,
                   key: jax.Array, num_frames: int, sigma_max: float, fps, motion_bucket_id,
                   noise_aug_strength) -> jax.Array:
    """SF-V's generator end to end in one traceable function: images (B, H, W, 3) in [-1, 1] -> frames
    (B, T, H, W, 3) float32 in [0, 1], T = num_frames.

    The stages are those of SFVPipeline with sampler "sfv" and one step (no guidance): CLIP and the VAE see the
    image at its own size; `key` draws the augmentation noise, then the initial latents.
    """
    batch = images.shape[0]
    aug_key, noise_key = jax.random.split(key)
    embeds = encode_image(image_encoder, images)
    image_latent = encode_condition(vae, images, jax.random.normal(aug_key, images.shape, jnp.float32),
                                    noise_aug_strength)
    image_latents = jnp.broadcast_to(image_latent[:, None], (batch, num_frames) + image_latent.shape[1:])
    time_ids = micro_conditioning(fps, motion_bucket_id, noise_aug_strength, batch)
    latents = jax.random.normal(noise_key, image_latents.shape, jnp.float32) * edm.init_noise_sigma(sigma_max)
    levels = jnp.asarray([sigma_max], jnp.float32)
    x0 = sfv_sample(unet, latents, levels, jnp.zeros((0,) + latents.shape), image_latents, embeds, time_ids)
    frames = decode(vae, x0.reshape(batch * num_frames, *x0.shape[2:]), num_frames)
    return frames.reshape(batch, num_frames, *frames.shape[1:])
