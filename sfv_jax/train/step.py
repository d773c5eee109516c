"""The pure SF-V train step: one generator update, then one discriminator-head update, on one batch.

Batch (global, float32 unless noted), all sharded over ("data", "fsdp") on the leading axis:
  latents:        (B, T, h, w, 4)  clean video latents x0, VAE latents times 0.18215.
  image_latent:   (B, h, w, 4)     conditioning latent (noise-augmented first frame, VAE mode, NOT scaled).
  clip:           (B, 1, D)        CLIP image embedding (D = cross_attention_dim).
  added_time_ids: (B, 3)           [fps - 1, motion_bucket_id, noise_aug_strength].
B splits into `grad_accum_steps` micro-batches of B / grad_accum_steps, taken strided (rows m, m + M, ...)
so each micro-batch keeps the batch sharding; gradients are averaged over micro-batches inside a lax.scan.

The step is `apply(state, *gradients(state, batch))`: both gradients are taken at the incoming state (D's
gradient uses the fakes of G's forward pass with the old G, and G's uses the old heads), so the split is
exact and lets tests look at the gradients the update was made from. The objective is docs/method.md
sections 3-5.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from sfv_jax.diffusion.edm import c_in, c_noise, denoise
from sfv_jax.models.options import at_least_float32
from sfv_jax.train import accumulate, losses, tree_stats
from sfv_jax.train.noise import NoiseSampler
from sfv_jax.train.state import SFVModels, TrainState

BATCH_KEYS = ("latents", "image_latent", "clip", "added_time_ids")
KEYS_PER_MICRO_STEP = 5  # G's sigma and eps, D's sigma' and eps', R1's perturbation


def _expand(sigma: jax.Array, ndim: int) -> jax.Array:
    return sigma.reshape(sigma.shape + (1,) * (ndim - 1))


def conditioned_input(x_t: jax.Array, sigma: jax.Array, image_latent: jax.Array) -> jax.Array:
    """The UNet input: c_in(sigma) * x_t (B, T, h, w, 4) next to the image latent repeated over frames -> (.., 8)."""
    cond = jnp.broadcast_to(image_latent[:, None], x_t.shape[:-1] + image_latent.shape[-1:])
    return jnp.concatenate([c_in(_expand(sigma, x_t.ndim)) * x_t, cond], axis=-1)


def one_call_x0(models: SFVModels, g_params, x_t: jax.Array, sigma: jax.Array, micro: dict) -> jax.Array:
    """G's one-call clean estimate x0_hat (B, T, h, w, 4), float32 or wider, of x_t at per-sample noise levels sigma (B,)."""
    out = models.generator(g_params)(conditioned_input(x_t, sigma, micro["image_latent"]), c_noise(sigma),
                                     micro["clip"], micro["added_time_ids"])
    return denoise(out.astype(at_least_float32(out.dtype)), x_t, _expand(sigma, x_t.ndim))


class SFVTrainStep:
    """train_step(state, batch) -> (state, metrics) for a config (see configs/tiny_sfv.py for the fields).

    batch_axes: mesh axes the batch is sharded over (e.g. ("data", "fsdp")); when given, micro-batches
    are constrained to that sharding (needs jax.set_mesh around tracing).
    """

    def __init__(self, config, models: SFVModels, batch_axes: tuple[str, ...] | None = None):
        self.sfv = config.sfv
        self.models = models
        self.num_micro = config.grad_accum_steps
        self.loop = accumulate.micro_batch_loop(config)
        self.ema_decay = config.optim.ema_decay
        self.batch_axes = batch_axes
        self.sampler = NoiseSampler.from_config(config.sfv)
        if self.sfv.r1_mode not in losses.R1_MODES:
            raise ValueError(f"sfv.r1_mode={self.sfv.r1_mode!r}: use one of {losses.R1_MODES}")

    # ------------------------------------------------------------------ the two objectives

    def discriminate(self, backbone, d_heads, noisy, sigma, micro) -> dict:
        d = self.models.discriminator(backbone, d_heads)
        return d(noisy, sigma, micro["image_latent"], micro["clip"], micro["added_time_ids"])

    def g_loss(self, g_params, backbone, d_heads, micro: dict, keys: jax.Array) -> tuple[jax.Array, dict]:
        """L_G = -mean D(fake) + lambda_recon * pseudo-Huber(x0_hat, x0) on one micro-batch; keys (4, 2).

        G's gradient flows through D's frozen backbone and heads (they are arguments, not differentiated).
        """
        x0 = micro["latents"]
        batch = x0.shape[0]
        sigma = self.sampler.generator_sigma(keys[0], batch)
        x_t = x0 + _expand(sigma, x0.ndim) * jax.random.normal(keys[1], x0.shape, x0.dtype)
        x0_hat = one_call_x0(self.models, g_params, x_t, sigma, micro)
        sigma_d = self.sampler.discriminator_sigma(keys[2], batch)
        eps_d = jax.random.normal(keys[3], x0.shape, x0.dtype)
        fake = self.discriminate(backbone, d_heads, x0_hat + _expand(sigma_d, x0.ndim) * eps_d, sigma_d, micro)
        recon = losses.pseudo_huber(x0_hat, x0, self.sfv.huber_c_scale)
        adv = losses.generator_adv_loss(fake)
        aux = dict(x0_hat=x0_hat, sigma=sigma, sigma_d=sigma_d, eps_d=eps_d, recon=recon, g_adv=adv)
        return adv + self.sfv.lambda_recon * recon, aux

    def d_loss(self, d_heads, backbone, micro: dict, x0_hat, sigma_d, eps_d, key) -> tuple[jax.Array, dict]:
        """L_D = hinge(real, fake) + r1_gamma * R1(real) on one micro-batch.

        Real and fake are re-noised with the SAME sigma' and eps' (docs/method.md section 3); the fake is
        stop_gradient(x0_hat), so nothing flows back into G.
        """
        x0 = micro["latents"]
        noise = _expand(sigma_d, x0.ndim) * eps_d
        real_in, fake_in = x0 + noise, jax.lax.stop_gradient(x0_hat) + noise
        # Real and fake share sigma', eps and conditions: one D pass over the concatenation.
        both = jax.tree.map(lambda a: jnp.concatenate([a, a]), micro)
        logits = self.discriminate(backbone, d_heads, jnp.concatenate([real_in, fake_in]),
                                   jnp.concatenate([sigma_d, sigma_d]), both)
        batch = x0.shape[0]
        real = jax.tree.map(lambda a: a[:batch], logits)
        fake = jax.tree.map(lambda a: a[batch:], logits)
        hinge = losses.hinge_d_loss(real, fake)
        score = lambda x: losses.score(self.discriminate(backbone, d_heads, x, sigma_d, micro))
        # approx mode compares against D(real), which the pass above already computed.
        r1 = losses.r1_penalty(score, real_in, self.sfv.r1_mode, key, self.sfv.r1_approx_sigma,
                               score_x=losses.score(real))
        means_real, means_fake = losses.head_means(real), losses.head_means(fake)
        aux = dict(hinge=hinge, r1=r1, **{f"d_real_{kind}": m for kind, m in means_real.items()},
                   **{f"d_fake_{kind}": m for kind, m in means_fake.items()})
        return hinge + self.sfv.r1_gamma * r1, aux

    # ------------------------------------------------------------------ batch plumbing

    def micro_batches(self, batch: dict) -> dict:
        """{key: (M, B / M, ...)}: micro-batch m holds rows m, m + M, ... (keeps the batch sharding)."""
        return accumulate.micro_batches({k: batch[k] for k in BATCH_KEYS}, self.num_micro, self.batch_axes)

    def step_keys(self, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(the state's next rng, (M, 5, 2) keys of this step's micro-batches)."""
        rng, step_key = jax.random.split(rng)
        keys = jax.random.split(step_key, self.num_micro * KEYS_PER_MICRO_STEP)
        return rng, keys.reshape(self.num_micro, KEYS_PER_MICRO_STEP, -1)

    def _accumulate(self, loss_fn, params, xs):
        """Mean gradient and stacked (loss, aux) of loss_fn(params, *x) over the micro-batches in xs."""
        return accumulate.mean_gradient(loss_fn, params, xs, self.num_micro, self.loop)

    # ------------------------------------------------------------------ the step

    def gradients(self, state: TrainState, batch: dict) -> tuple[dict, dict]:
        """({"g": G's mean gradient, "d": the heads' mean gradient}, per-micro-batch losses and aux)."""
        _, keys = self.step_keys(state.rng)
        micro = self.micro_batches(batch)
        backbone = jax.lax.stop_gradient(state.backbone)
        g_grads, g_loss, g_aux = self._accumulate(
            lambda p, m, k: self.g_loss(p, backbone, state.d_heads, m, k), state.g_params, (micro, keys[:, :4]))
        d_grads, d_loss, d_aux = self._accumulate(
            lambda h, m, x, s, e, k: self.d_loss(h, backbone, m, x, s, e, k), state.d_heads,
            (micro, g_aux["x0_hat"], g_aux["sigma_d"], g_aux["eps_d"], keys[:, 4]))
        g_aux = {k: v for k, v in g_aux.items() if k not in ("x0_hat", "eps_d")}
        return dict(g=g_grads, d=d_grads), dict(g_loss=g_loss, d_loss=d_loss, **g_aux, **d_aux)

    def gradients_shardings(self, state, replicated):
        """The shardings of gradients()' outputs given the state's: each gradient as its params, aux replicated."""
        return dict(g=state.g_params, d=state.d_heads), replicated

    def apply(self, state: TrainState, grads: dict, aux: dict) -> tuple[TrainState, dict]:
        """The optimiser updates, G's EMA, the non-finite guard and the step's metrics."""
        models = self.models
        g_updates, g_opt = models.g_tx.update(grads["g"], state.g_opt, state.g_params)
        g_params = optax.apply_updates(state.g_params, g_updates)
        g_ema = jax.tree.map(lambda e, p: self.ema_decay * e + (1.0 - self.ema_decay) * p, state.g_ema, g_params)
        d_updates, d_opt = models.d_tx.update(grads["d"], state.d_opt, state.d_heads)
        d_heads = optax.apply_updates(state.d_heads, d_updates)

        # Non-finite guard: a step whose losses or updates are not finite changes nothing but the step
        # counter and the rng (so the data and noise move on); the loop counts such steps.
        finite = (jnp.all(jnp.isfinite(aux["g_loss"])) & jnp.all(jnp.isfinite(aux["d_loss"]))
                  & jnp.isfinite(tree_stats.global_norm(g_updates)) & jnp.isfinite(tree_stats.global_norm(d_updates)))
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        rng, _ = self.step_keys(state.rng)
        new_state = state.replace(
            step=state.step + 1, rng=rng, g_params=keep(g_params, state.g_params), g_ema=keep(g_ema, state.g_ema),
            d_heads=keep(d_heads, state.d_heads), g_opt=keep(g_opt, state.g_opt), d_opt=keep(d_opt, state.d_opt))
        # d_{real,fake}_{spatial,temporal}: the mean logits of each head family the discriminator has
        metrics = {k: jnp.mean(v) for k, v in aux.items()
                   if k in ("g_loss", "d_loss", "recon", "g_adv", "hinge", "r1") or k.startswith(("d_real_", "d_fake_"))}
        metrics.update(
            g_grad_norm=tree_stats.global_norm(grads["g"]), d_grad_norm=tree_stats.global_norm(grads["d"]),
            sigma_g_mean=jnp.mean(aux["sigma"]), sigma_d_mean=jnp.mean(aux["sigma_d"]),
            sigma_d_log_mean=jnp.mean(jnp.log(aux["sigma_d"])), sigma_d_min=jnp.min(aux["sigma_d"]),
            sigma_d_max=jnp.max(aux["sigma_d"]), nonfinite=1.0 - finite.astype(jnp.float32))
        return new_state, metrics

    def __call__(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        return self.apply(state, *self.gradients(state, batch))


def make_train_step(config, models: SFVModels, batch_axes: tuple[str, ...] | None = None) -> SFVTrainStep:
    """The pure step for jax.jit: train_step(state, batch) -> (state, metrics)."""
    return SFVTrainStep(config, models, batch_axes)


def reconstruction_eval(config, models: SFVModels, g_params, batch: dict, seed: int = 0) -> jax.Array:
    """Mean pseudo-Huber of G's one-call x0_hat over all Tg - 1 levels with fixed noise (for tests/eval)."""
    sampler = NoiseSampler.from_config(config.sfv)
    x0 = batch["latents"]
    eps = jax.random.normal(jax.random.PRNGKey(seed), x0.shape, x0.dtype)
    total = 0.0
    for level in sampler.g_levels:
        sigma = jnp.full((x0.shape[0],), level, jnp.float32)
        x0_hat = one_call_x0(models, g_params, x0 + _expand(sigma, x0.ndim) * eps, sigma, batch)
        total = total + losses.pseudo_huber(x0_hat, x0, config.sfv.huber_c_scale)
    return total / len(sampler.g_levels)
