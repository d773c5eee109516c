"""The pure SF-V train step: one generator update, then one discriminator-head update, on one batch.

Batch (global, float32 unless noted), all sharded over ("data", "fsdp") on the leading axis:
  latents:        (B, T, h, w, 4)  clean video latents x0, VAE latents times 0.18215.
  image_latent:   (B, h, w, 4)     conditioning latent (noise-augmented first frame, VAE mode, NOT scaled).
  clip:           (B, 1, D)        CLIP image embedding (D = cross_attention_dim).
  added_time_ids: (B, 3)           [fps - 1, motion_bucket_id, noise_aug_strength].
B splits into `grad_accum_steps` micro-batches of B / grad_accum_steps, taken strided (rows m, m + M, ...)
so each micro-batch keeps the batch sharding; gradients are averaged over micro-batches inside a lax.scan.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from sfv_jax.diffusion.edm import c_in, c_noise, denoise
from sfv_jax.train import losses
from sfv_jax.train.noise import NoiseSampler
from sfv_jax.train.state import SFVModels, TrainState

BATCH_KEYS = ("latents", "image_latent", "clip", "added_time_ids")


def _expand(sigma: jax.Array, ndim: int) -> jax.Array:
    return sigma.reshape(sigma.shape + (1,) * (ndim - 1))


def make_train_step(config, models: SFVModels, batch_axes: tuple[str, ...] | None = None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """train_step(state, batch) -> (state, metrics) for config (see configs/tiny_sfv.py for the fields).

    batch_axes: mesh axes the batch is sharded over (e.g. ("data", "fsdp")); when given, micro-batches
    are constrained to that sharding (needs jax.set_mesh around tracing).
    """
    sfv = config.sfv
    num_micro = config.grad_accum_steps
    sampler = NoiseSampler.from_config(sfv)
    ema_decay = config.optim.ema_decay

    def constrain(tree):
        if batch_axes is None:
            return tree
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, P(None, batch_axes)), tree)

    def split_micro(x):
        if x.shape[0] % num_micro:
            raise ValueError(f"batch of {x.shape[0]} does not split into {num_micro} micro-batches")
        return x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:]).swapaxes(0, 1)

    def discriminate(backbone, d_heads, noisy, sigma, micro):
        d = models.discriminator(backbone, d_heads)
        return d(noisy, sigma, micro["image_latent"], micro["clip"], micro["added_time_ids"])

    def g_loss_fn(g_params, backbone, d_heads, micro, keys):
        x0 = micro["latents"]
        batch = x0.shape[0]
        sigma = sampler.generator_sigma(keys[0], batch)
        x_t = x0 + _expand(sigma, x0.ndim) * jax.random.normal(keys[1], x0.shape, x0.dtype)
        s = _expand(sigma, x0.ndim)
        image = micro["image_latent"]
        cond = jnp.broadcast_to(image[:, None], x0.shape[:-1] + image.shape[-1:])
        out = models.generator(g_params)(jnp.concatenate([c_in(s) * x_t, cond], axis=-1), c_noise(sigma),
                                         micro["clip"], micro["added_time_ids"])
        x0_hat = denoise(out.astype(jnp.float32), x_t, s)
        sigma_d = sampler.discriminator_sigma(keys[2], batch)
        eps_d = jax.random.normal(keys[3], x0.shape, x0.dtype)
        fake = discriminate(backbone, d_heads, x0_hat + _expand(sigma_d, x0.ndim) * eps_d, sigma_d, micro)
        recon = losses.pseudo_huber(x0_hat, x0, sfv.huber_c_scale)
        adv = losses.generator_adv_loss(fake)
        aux = dict(x0_hat=x0_hat, sigma=sigma, sigma_d=sigma_d, eps_d=eps_d, recon=recon, g_adv=adv)
        return adv + sfv.lambda_recon * recon, aux

    def d_loss_fn(d_heads, backbone, micro, x0_hat, sigma_d, eps_d, key):
        x0 = micro["latents"]
        noise = _expand(sigma_d, x0.ndim) * eps_d
        real_in, fake_in = x0 + noise, jax.lax.stop_gradient(x0_hat) + noise
        # Real and fake share sigma', eps and conditions: one D pass over the concatenation.
        both = jax.tree.map(lambda a: jnp.concatenate([a, a]), micro)
        logits = discriminate(backbone, d_heads, jnp.concatenate([real_in, fake_in]),
                              jnp.concatenate([sigma_d, sigma_d]), both)
        batch = x0.shape[0]
        real = jax.tree.map(lambda a: a[:batch], logits)
        fake = jax.tree.map(lambda a: a[batch:], logits)
        hinge = losses.hinge_d_loss(real, fake)
        score = lambda x: losses.score(discriminate(backbone, d_heads, x, sigma_d, micro))
        r1 = losses.r1_penalty(score, real_in, sfv.r1_mode, key, sfv.r1_approx_sigma)
        means_real, means_fake = losses.head_means(real), losses.head_means(fake)
        aux = dict(hinge=hinge, r1=r1, d_real_spatial=means_real["spatial"], d_real_temporal=means_real["temporal"],
                   d_fake_spatial=means_fake["spatial"], d_fake_temporal=means_fake["temporal"])
        return hinge + sfv.r1_gamma * r1, aux

    def accumulate(loss_fn, params, xs):
        """Mean gradient and stacked (loss, aux) of loss_fn(params, *x) over the micro-batches in xs."""
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def body(acc, x):
            (loss, aux), grads = grad_fn(params, *x)
            return jax.tree.map(jnp.add, acc, grads), (loss, aux)

        zeros = jax.tree.map(jnp.zeros_like, params)
        grads, (loss, aux) = jax.lax.scan(body, zeros, xs)
        return jax.tree.map(lambda g: g / num_micro, grads), loss, aux

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng, step_key = jax.random.split(state.rng)
        keys = jax.random.split(step_key, num_micro * 5).reshape(num_micro, 5, -1)
        micro = constrain({k: split_micro(batch[k]) for k in BATCH_KEYS})
        backbone = jax.lax.stop_gradient(state.backbone)

        # Generator: adversarial + lambda * pseudo-Huber, through the (current) discriminator.
        g_grads, g_loss, g_aux = accumulate(
            lambda p, m, k: g_loss_fn(p, backbone, state.d_heads, m, k), state.g_params, (micro, keys[:, :4]))
        g_updates, g_opt = models.g_tx.update(g_grads, state.g_opt, state.g_params)
        g_params = optax.apply_updates(state.g_params, g_updates)
        g_ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.g_ema, g_params)

        # Discriminator heads: hinge + gamma * R1 on the fakes of the generator forward pass.
        d_grads, d_loss, d_aux = accumulate(
            lambda h, m, x, s, e, k: d_loss_fn(h, backbone, m, x, s, e, k), state.d_heads,
            (micro, g_aux["x0_hat"], g_aux["sigma_d"], g_aux["eps_d"], keys[:, 4]))
        d_updates, d_opt = models.d_tx.update(d_grads, state.d_opt, state.d_heads)
        d_heads = optax.apply_updates(state.d_heads, d_updates)

        # Non-finite guard: a step whose losses or updates are not finite changes nothing but the step
        # counter and the rng (so the data and noise move on); the loop counts such steps.
        finite = (jnp.all(jnp.isfinite(g_loss)) & jnp.all(jnp.isfinite(d_loss))
                  & jnp.isfinite(optax.global_norm(g_updates)) & jnp.isfinite(optax.global_norm(d_updates)))
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = state.replace(
            step=state.step + 1, rng=rng, g_params=keep(g_params, state.g_params), g_ema=keep(g_ema, state.g_ema),
            d_heads=keep(d_heads, state.d_heads), g_opt=keep(g_opt, state.g_opt), d_opt=keep(d_opt, state.d_opt))
        # Checked here (one fused reduction) so the loop never writes a checkpoint holding NaN or inf.
        state_finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(
            (new_state.g_params, new_state.g_ema, new_state.d_heads)) if jnp.issubdtype(x.dtype, jnp.inexact)]))
        log_sigma_d = jnp.log(g_aux["sigma_d"])
        metrics = dict(
            g_loss=jnp.mean(g_loss), d_loss=jnp.mean(d_loss), recon=jnp.mean(g_aux["recon"]),
            g_adv=jnp.mean(g_aux["g_adv"]), hinge=jnp.mean(d_aux["hinge"]), r1=jnp.mean(d_aux["r1"]),
            d_real_spatial=jnp.mean(d_aux["d_real_spatial"]), d_real_temporal=jnp.mean(d_aux["d_real_temporal"]),
            d_fake_spatial=jnp.mean(d_aux["d_fake_spatial"]), d_fake_temporal=jnp.mean(d_aux["d_fake_temporal"]),
            g_grad_norm=optax.global_norm(g_grads), d_grad_norm=optax.global_norm(d_grads),
            sigma_g_mean=jnp.mean(g_aux["sigma"]), sigma_d_mean=jnp.mean(g_aux["sigma_d"]),
            sigma_d_log_mean=jnp.mean(log_sigma_d), sigma_d_min=jnp.min(g_aux["sigma_d"]),
            sigma_d_max=jnp.max(g_aux["sigma_d"]), nonfinite=1.0 - finite.astype(jnp.float32),
            state_finite=state_finite.astype(jnp.float32))
        return new_state, metrics

    return train_step


def reconstruction_eval(config, models: SFVModels, g_params, batch: dict, seed: int = 0) -> jax.Array:
    """Mean pseudo-Huber of G's one-call x0_hat over all Tg - 1 levels with fixed noise (for tests/eval)."""
    sampler = NoiseSampler.from_config(config.sfv)
    x0 = batch["latents"]
    eps = jax.random.normal(jax.random.PRNGKey(seed), x0.shape, x0.dtype)
    image = batch["image_latent"]
    cond = jnp.broadcast_to(image[:, None], x0.shape[:-1] + image.shape[-1:])
    total = 0.0
    for level in sampler.g_levels:
        sigma = jnp.full((x0.shape[0],), level, jnp.float32)
        s = _expand(sigma, x0.ndim)
        x_t = x0 + s * eps
        out = models.generator(g_params)(jnp.concatenate([c_in(s) * x_t, cond], axis=-1), c_noise(sigma),
                                         batch["clip"], batch["added_time_ids"])
        total = total + losses.pseudo_huber(denoise(out.astype(jnp.float32), x_t, s), x0, config.sfv.huber_c_scale)
    return total / len(sampler.g_levels)
