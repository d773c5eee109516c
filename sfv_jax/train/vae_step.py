"""The pure vae step: the temporal VAE (AutoencoderKLTemporalDecoder) trained as a KL autoencoder.

Each frame is encoded alone to a diagonal Gaussian (mean, logvar); a draw z = mean + exp(logvar / 2) eps is
decoded clip by clip by the temporal decoder, and (docs/method.md section 7)
    L = recon_weight * recon(x_hat, x) + kl_weight * KL(N(mean, var) || N(0, 1)),
recon = mean |x_hat - x| (l1) or mean (x_hat - x)^2 (l2) over pixels in [-1, 1], KL the mean over latent
elements of 0.5 (mean^2 + var - 1 - logvar). Both are per-element means, so the weights do not depend on the
resolution. With decoder_only the encoder and quant_conv stay as they are (SVD fine-tuned only the decoder):
no gradient reaches them and the update leaves them untouched. With crop = c > 0 each training clip is cut to a
random c x c window (the same for all its frames) before encoding: the VAE is convolutional (its attention sits
at the lowest resolution only), so it learns from windows at a fraction of the cost; the held-out loss still
reads whole frames.

Batch (global): video (B, T, H, W, 3) float32 in [-1, 1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sfv_jax.models.options import at_least_float32
from sfv_jax.models.vae import downsampling_factor
from sfv_jax.train import accumulate
from sfv_jax.train.model_state import ModelTrainState, apply_gradients, gradients_shardings

RECON_LOSSES = ("l1", "l2")
ENCODER_KEYS = ("encoder", "quant_conv")  # the VAE's top-level params that decoder_only freezes


def reconstruction_loss(x_hat: jax.Array, x: jax.Array, kind: str) -> jax.Array:
    """mean |x_hat - x| (l1) or mean (x_hat - x)^2 (l2) over every element, float32 or wider."""
    dtype = at_least_float32(jnp.promote_types(x_hat.dtype, x.dtype))
    diff = x_hat.astype(dtype) - x.astype(dtype)
    if kind == "l1":
        return jnp.mean(jnp.abs(diff))
    if kind == "l2":
        return jnp.mean(jnp.square(diff))
    raise ValueError(f"vae_loss.recon={kind!r}: use one of {RECON_LOSSES}")


def random_crops(video: jax.Array, size: int, key: jax.Array) -> jax.Array:
    """video (B, T, H, W, C) -> (B, T, size, size, C): one uniformly drawn window per clip, the same in every frame.
    size 0 returns the video unchanged."""
    if not size:
        return video
    batch, frames, height, width, channels = video.shape
    if size > min(height, width):
        raise ValueError(f"vae_loss.crop={size} is larger than the {height}x{width} frames: use 0 (whole frames) "
                         f"or at most {min(height, width)}")
    tops = jax.random.randint(jax.random.fold_in(key, 0), (batch,), 0, height - size + 1)
    lefts = jax.random.randint(jax.random.fold_in(key, 1), (batch,), 0, width - size + 1)
    window = lambda clip, top, left: jax.lax.dynamic_slice(clip, (0, top, left, 0), (frames, size, size, channels))
    return jax.vmap(window)(video, tops, lefts)


def kl_to_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """mean over elements of KL(N(mean, exp(logvar)) || N(0, 1)) = 0.5 (mean^2 + var - 1 - logvar)."""
    mean, logvar = mean.astype(at_least_float32(mean.dtype)), logvar.astype(at_least_float32(logvar.dtype))
    return jnp.mean(0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar))


class VAETrainStep:
    """train_step(state, batch) -> (state, metrics) for config.objective == "vae".

    models: sfv_jax.train.objectives.VAEModels (its graph `vae(params)` and optimiser `tx`);
    config.vae_loss holds recon ("l1" | "l2"), recon_weight, kl_weight, decoder_only and crop (0: whole frames).
    """

    def __init__(self, config, models, batch_axes: tuple[str, ...] | None = None):
        self.cfg = config.vae_loss
        if self.cfg.recon not in RECON_LOSSES:
            raise ValueError(f"vae_loss.recon={self.cfg.recon!r}: use one of {RECON_LOSSES}")
        self.models = models
        self.num_micro = config.grad_accum_steps
        self.loop = accumulate.micro_batch_loop(config)
        self.ema_decay = config.optim.ema_decay
        self.batch_axes = batch_axes
        self.frozen = ENCODER_KEYS if self.cfg.decoder_only else ()
        self.crop = int(self.cfg.get("crop", 0))
        downsampling = downsampling_factor(config.vae.block_out_channels)
        if self.crop % downsampling or self.crop < 0:
            raise ValueError(f"vae_loss.crop={self.crop}: use 0 (whole frames) or a multiple of {downsampling} "
                             f"(the VAE's downsampling)")

    def loss_parts(self, params, video: jax.Array, key: jax.Array | None) -> dict:
        """{"recon", "kl"} of clips video (B, T, H, W, 3); key None decodes the posterior means (no draw)."""
        vae = self.models.vae(params)
        batch, frames = video.shape[:2]
        images = video.reshape(batch * frames, *video.shape[2:])
        mean, logvar = vae.latent_dist(images)
        if self.frozen:
            mean, logvar = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(logvar)
        z = mean.astype(jnp.float32)
        if key is not None:
            z = z + jnp.exp(0.5 * logvar.astype(jnp.float32)) * jax.random.normal(key, z.shape, jnp.float32)
        # Every clip in one decoder pass: vae.decode runs clips one after another in a lax.scan (to bound inference
        # memory), whose gradient XLA:CPU computes ~15x slower than this (25 s vs 1.6 s at 2 x 8 x 64 x 64).
        x_hat = vae.decoder(z.astype(vae.options.compute_dtype), frames)
        return dict(recon=reconstruction_loss(x_hat, images, self.cfg.recon), kl=kl_to_standard_normal(mean, logvar))

    def combine(self, parts: dict) -> jax.Array:
        return self.cfg.recon_weight * parts["recon"] + self.cfg.kl_weight * parts["kl"]

    def loss(self, params, micro: dict, key: jax.Array) -> tuple[jax.Array, dict]:
        # the window's key is folded from the draw's, so crop=0 leaves the posterior draws as they were
        video = random_crops(micro["video"], self.crop, jax.random.fold_in(key, 1))
        parts = self.loss_parts(params, video, key)
        return self.combine(parts), parts

    def step_keys(self, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(the state's next rng, (M, 2) keys of this step's micro-batches: the posterior draws)."""
        rng, step_key = jax.random.split(rng)
        return rng, jax.random.split(step_key, self.num_micro)

    def gradients(self, state: ModelTrainState, batch: dict) -> tuple[dict, jax.Array, dict]:
        _, keys = self.step_keys(state.rng)
        micro = accumulate.micro_batches({"video": batch["video"]}, self.num_micro, self.batch_axes)
        return accumulate.mean_gradient(self.loss, state.params, (micro, keys), self.num_micro, self.loop)

    gradients_shardings = staticmethod(gradients_shardings)

    def apply(self, state: ModelTrainState, grads: dict, losses: jax.Array,
              parts: dict) -> tuple[ModelTrainState, dict]:
        """The update from gradients()'s outputs: the optimiser step, the EMA, the non-finite guard, the metrics."""
        rng, _ = self.step_keys(state.rng)
        new_state, metrics = apply_gradients(state, grads, losses, self.models.tx, self.ema_decay, rng, self.frozen)
        metrics.update(recon=jnp.mean(parts["recon"]), kl=jnp.mean(parts["kl"]))
        return new_state, metrics

    def __call__(self, state: ModelTrainState, batch: dict) -> tuple[ModelTrainState, dict]:
        return self.apply(state, *self.gradients(state, batch))

    def eval_loss(self, params, batch: dict, seed: int = 0) -> jax.Array:
        """Held-out loss: the same weighted sum with the posterior means decoded (deterministic)."""
        del seed
        return self.combine(self.loss_parts(params, batch["video"], None))
