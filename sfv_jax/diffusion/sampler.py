"""SVD's Euler sampler with the per-frame guidance ramp, and SF-V's one-step / few-step generator.

Both are pure functions of a UNet module and arrays, meant to run inside ONE jitted program: the
loop over noise levels is a lax.fori_loop whose carry holds the UNet's state (so NNX transforms
inside the UNet, e.g. remat, stay legal) and the latents.

Shapes: latents (B, T, h, w, 4); image_latents (B, T, h, w, 4) (the VAE mode of the conditioning
frame, unscaled, repeated over frames); image_embeddings (B, 1, D); added_time_ids (B, 3);
guidance (B, T) per-frame scales or None for no classifier-free guidance.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from sfv_jax.diffusion import edm


def guidance_ramp(min_scale: float, max_scale: float, num_frames: int, batch: int = 1) -> jax.Array:
    """diffusers' per-frame guidance: linspace(min, max, T) for every clip, (B, T) float32."""
    return jnp.tile(jnp.linspace(min_scale, max_scale, num_frames, dtype=jnp.float32)[None], (batch, 1))


def denoiser_output(unet, x, sigma, image_latents, image_embeddings, added_time_ids, guidance=None):
    """F(c_in(sigma) x; c_noise(sigma), cond), guided as diffusers does when `guidance` is given.

    With guidance the batch is [uncond, cond]: the unconditional half gets zero image latents and
    a zero CLIP embedding (same added_time_ids), and F = F_u + g_t (F_c - F_u) per frame t.
    Returns float32 (B, T, h, w, 4).
    """
    x_in = x / ((sigma ** 2 + 1.0) ** 0.5)  # scheduler.scale_model_input
    batch = x.shape[0]
    if guidance is None:
        sample = jnp.concatenate([x_in, image_latents.astype(x_in.dtype)], axis=-1)
        timestep = jnp.broadcast_to(edm.c_noise(sigma), (batch,))
        return unet(sample, timestep, image_embeddings, added_time_ids).astype(jnp.float32)
    cond = jnp.concatenate([jnp.zeros_like(image_latents), image_latents], axis=0).astype(x_in.dtype)
    sample = jnp.concatenate([jnp.concatenate([x_in, x_in], axis=0), cond], axis=-1)
    embeds = jnp.concatenate([jnp.zeros_like(image_embeddings), image_embeddings], axis=0)
    time_ids = jnp.concatenate([added_time_ids, added_time_ids], axis=0)
    timestep = jnp.broadcast_to(edm.c_noise(sigma), (2 * batch,))
    out = unet(sample, timestep, embeds, time_ids).astype(jnp.float32)
    uncond, cond_out = out[:batch], out[batch:]
    return uncond + guidance[:, :, None, None, None] * (cond_out - uncond)


def euler_sample(unet: nnx.Module, latents: jax.Array, sigmas: jax.Array, image_latents: jax.Array,
                 image_embeddings: jax.Array, added_time_ids: jax.Array, guidance: jax.Array | None = None,
                 on_step: Callable[[jax.Array], None] | None = None, num_steps: jax.Array | int | None = None
                 ) -> jax.Array:
    """SVD's Euler sampler (diffusers' EulerDiscreteScheduler.step, no churn) over `sigmas` (N + 1,), last 0.

    `latents` is the initial noise already scaled by init_noise_sigma. With N = 1 this is SF-V's
    generator: x0_hat = D(x; sigma_max) (the Euler step to sigma 0 lands on x0_hat).
    `num_steps` (may be traced) runs only the first steps of a padded `sigmas` (see pad_sigmas), so
    one compiled program serves every step count. `on_step(i)` is called on the host after step i
    (progress bars). Returns float32 latents.
    """
    graphdef, state = nnx.split(unet)
    num_steps = sigmas.shape[0] - 1 if num_steps is None else num_steps

    def body(i, carry):
        params, x = carry
        model = nnx.merge(graphdef, params)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        out = denoiser_output(model, x, sigma, image_latents, image_embeddings, added_time_ids, guidance)
        x0 = edm.denoise(out, x, sigma)
        derivative = (x - x0) / sigma
        x = x + derivative * (sigma_next - sigma)
        if on_step is not None:
            # Unordered: ordered effects do not compile for programs over several devices; the ticks
            # of one step still follow the loop, since each waits on that step's index.
            jax.debug.callback(on_step, i)
        return params, x

    _, x = jax.lax.fori_loop(0, num_steps, body, (state, latents.astype(jnp.float32)))
    return x


def pad_sigmas(sigmas, multiple: int = 32):
    """Pads a (N + 1,) schedule with zeros to a multiple of `multiple` entries (one compile per bucket)."""
    import numpy as np
    size = -(-len(sigmas) // multiple) * multiple
    return np.concatenate([sigmas, np.zeros(size - len(sigmas), sigmas.dtype)])


def sfv_levels(num_steps: int, schedule: edm.NoiseSchedule = edm.NoiseSchedule(), train_levels: int = 4):
    """SF-V's generator levels: the top `num_steps` (1 to train_levels - 1) of a train_levels-step Karras schedule.

    With SVD's schedule and 4 levels: [700.0, 70.54, 2.269] (docs/method.md section 2). float32 numpy.
    """
    if not 1 <= num_steps <= train_levels - 1:
        raise ValueError(f"SF-V refinement uses 1 to {train_levels - 1} steps, got {num_steps}")
    return schedule.sigmas(train_levels)[:num_steps]


def sfv_sample(unet: nnx.Module, latents: jax.Array, levels: jax.Array, renoise: jax.Array, image_latents: jax.Array,
               image_embeddings: jax.Array, added_time_ids: jax.Array, guidance: jax.Array | None = None) -> jax.Array:
    """SF-V few-step refinement: x0 = D(x; levels[0]), then for each next level s: x0 = D(x0 + s * eps; s).

    `latents` is the initial noise scaled by init_noise_sigma (as SVD's scheduler does); `renoise`
    (K - 1, B, T, h, w, 4) holds the fresh unit noise of each re-noising, K = len(levels).
    One level is exactly the one-step generator. Returns float32 x0_hat.
    """
    graphdef, state = nnx.split(unet)

    def denoised(params, x, sigma):
        out = denoiser_output(nnx.merge(graphdef, params), x, sigma, image_latents, image_embeddings,
                              added_time_ids, guidance)
        return edm.denoise(out, x, sigma)

    x0 = denoised(state, latents.astype(jnp.float32), levels[0])
    if levels.shape[0] == 1:
        return x0

    def body(i, carry):
        params, x0 = carry
        sigma = levels[i]
        return params, denoised(params, x0 + sigma * renoise[i - 1], sigma)

    _, x0 = jax.lax.fori_loop(1, levels.shape[0], body, (state, x0))
    return x0
