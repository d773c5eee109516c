"""The pure denoise step: SVD's image-to-video diffusion objective on the UNet (fine-tuning SVD, or a teacher).

EDM training with SVD's preconditioning (docs/method.md section 7): a clip's latents x0 are noised to
x_t = x0 + sigma * eps with ln(sigma) ~ N(P_mean, P_std^2) per clip, the UNet's clean estimate
D(x_t) = c_skip x_t + c_out F(c_in x_t; c_noise, cond) is the one the samplers use
(sfv_jax.train.step.one_call_x0), and the loss is the EDM-weighted squared error
    L = mean_clips w(sigma) * mean_elements (D(x_t) - x0)^2,   w(sigma) = (sigma^2 + 1) / sigma^2   (sigma_data = 1).
With probability cond_drop_prob a clip's image conditions (CLIP embedding and image latent) are both zeroed,
the unconditional input that classifier-free guidance uses at sampling (sfv_jax.diffusion.sampler).

Batch (global, float32): latents (B, T, h, w, 4), image_latent (B, h, w, 4), clip (B, 1, D),
added_time_ids (B, 3), as sfv_jax.train.step documents; the conditioning frame's noise augmentation (its
strength drawn per clip) happens when the batch is encoded (sfv_jax.train.objectives).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sfv_jax.models.options import at_least_float32
from sfv_jax.train import accumulate
from sfv_jax.train.model_state import ModelTrainState, apply_gradients, gradients_shardings
from sfv_jax.train.step import BATCH_KEYS, one_call_x0

KEYS_PER_MICRO_STEP = 3  # sigma, eps, condition dropout


def edm_weight(sigma: jax.Array) -> jax.Array:
    """EDM's loss weight (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2 with sigma_data = 1."""
    return (sigma ** 2 + 1.0) / sigma ** 2


def weighted_denoise_loss(x0_hat: jax.Array, x0: jax.Array, sigma: jax.Array) -> jax.Array:
    """mean over clips of edm_weight(sigma_b) * mean over elements of (x0_hat_b - x0_b)^2.

    x0_hat, x0: (B, ...) latents; sigma: (B,). Computed in float32 or wider.
    """
    dtype = at_least_float32(jnp.promote_types(x0_hat.dtype, x0.dtype))
    sq = jnp.square(x0_hat.astype(dtype) - x0.astype(dtype)).reshape(x0.shape[0], -1).mean(axis=1)
    return jnp.mean(edm_weight(sigma.astype(dtype)) * sq)


def drop_conditions(micro: dict, keep: jax.Array) -> dict:
    """micro with the CLIP embedding and image latent of clips where keep (B,) is False set to zero."""
    def mask(x):
        return jnp.where(keep.reshape((-1,) + (1,) * (x.ndim - 1)), x, jnp.zeros_like(x))
    return {**micro, "clip": mask(micro["clip"]), "image_latent": mask(micro["image_latent"])}


class DenoiseTrainStep:
    """train_step(state, batch) -> (state, metrics) for config.objective == "denoise".

    models: an sfv_jax.train.state.SFVModels (its generator graph, g_tx); config.denoise holds
    p_mean, p_std, cond_drop_prob and eval_sigmas.
    """

    def __init__(self, config, models, batch_axes: tuple[str, ...] | None = None):
        self.cfg = config.denoise
        self.models = models
        self.num_micro = config.grad_accum_steps
        self.loop = accumulate.micro_batch_loop(config)
        self.ema_decay = config.optim.ema_decay
        self.batch_axes = batch_axes

    def loss_at(self, params, micro: dict, sigma: jax.Array, eps: jax.Array, keep: jax.Array) -> tuple[jax.Array, dict]:
        """The weighted loss of one micro-batch at given noise levels sigma (B,), noise eps (like latents) and
        condition mask keep (B,) bool."""
        x0 = micro["latents"]
        x_t = x0 + sigma.reshape((-1,) + (1,) * (x0.ndim - 1)) * eps
        x0_hat = one_call_x0(self.models, params, x_t, sigma, drop_conditions(micro, keep))
        return weighted_denoise_loss(x0_hat, x0, sigma), dict(sigma=sigma)

    def draw_noise(self, keys: jax.Array, x0: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(sigma (B,) with ln sigma ~ N(p_mean, p_std^2), eps ~ N(0, 1) like x0, keep (B,) bool with
        P(False) = cond_drop_prob) from keys (3, 2)."""
        batch = x0.shape[0]
        sigma = jnp.exp(self.cfg.p_mean + self.cfg.p_std * jax.random.normal(keys[0], (batch,), jnp.float32))
        eps = jax.random.normal(keys[1], x0.shape, x0.dtype)
        keep = jax.random.uniform(keys[2], (batch,)) >= self.cfg.cond_drop_prob
        return sigma, eps, keep

    def loss(self, params, micro: dict, keys: jax.Array) -> tuple[jax.Array, dict]:
        """The denoise loss of one micro-batch with its noise drawn from keys (3, 2)."""
        return self.loss_at(params, micro, *self.draw_noise(keys, micro["latents"]))

    def step_keys(self, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(the state's next rng, (M, 3, 2) keys of this step's micro-batches)."""
        rng, step_key = jax.random.split(rng)
        keys = jax.random.split(step_key, self.num_micro * KEYS_PER_MICRO_STEP)
        return rng, keys.reshape(self.num_micro, KEYS_PER_MICRO_STEP, -1)

    def gradients(self, state: ModelTrainState, batch: dict) -> tuple[dict, jax.Array, dict]:
        """(mean gradient over micro-batches, per-micro-batch losses (M,), aux)."""
        _, keys = self.step_keys(state.rng)
        micro = accumulate.micro_batches({k: batch[k] for k in BATCH_KEYS}, self.num_micro, self.batch_axes)
        return accumulate.mean_gradient(self.loss, state.params, (micro, keys), self.num_micro, self.loop)

    gradients_shardings = staticmethod(gradients_shardings)

    def apply(self, state: ModelTrainState, grads: dict, losses: jax.Array,
              aux: dict) -> tuple[ModelTrainState, dict]:
        """The update from gradients()'s outputs: the optimiser step, the EMA, the non-finite guard, the metrics."""
        rng, _ = self.step_keys(state.rng)
        new_state, metrics = apply_gradients(state, grads, losses, self.models.g_tx, self.ema_decay, rng)
        metrics.update(sigma_mean=jnp.mean(aux["sigma"]), sigma_log_mean=jnp.mean(jnp.log(aux["sigma"])))
        return new_state, metrics

    def __call__(self, state: ModelTrainState, batch: dict) -> tuple[ModelTrainState, dict]:
        return self.apply(state, *self.gradients(state, batch))

    def eval_loss(self, params, batch: dict, seed: int = 0) -> jax.Array:
        """Held-out loss: the weighted loss averaged over config.denoise.eval_sigmas, with fixed noise and
        every condition kept (deterministic for a given batch and seed)."""
        x0 = batch["latents"]
        eps = jax.random.normal(jax.random.PRNGKey(seed), x0.shape, x0.dtype)
        keep = jnp.ones((x0.shape[0],), bool)
        micro = {k: batch[k] for k in BATCH_KEYS}
        total = [self.loss_at(params, micro, jnp.full((x0.shape[0],), s, jnp.float32), eps, keep)[0]
                 for s in self.cfg.eval_sigmas]
        return jnp.mean(jnp.stack(total))
