"""The train state of the single-model objectives (denoise: SVD's UNet; vae: the temporal VAE), and their update.

SF-V trains two networks against each other and keeps its own TrainState (sfv_jax.train.state); the other
objectives train one model with one optimiser, and share this state and update rule: the optimiser step, the
EMA of the weights, and the non-finite guard.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from sfv_jax.train.tree_stats import global_norm


@flax.struct.dataclass
class ModelTrainState:
    """Everything a single-model train step reads and writes.

    Attributes:
      step: () int32 number of steps taken.
      rng: (2,) uint32 PRNG key for the next step.
      params: the trained model's params (nested dict, diffusers names).
      ema: EMA of params (what the workdir's checkpoint index reads by default).
      opt: the optax state of params' optimiser.
      encoders: frozen params the batches are encoded with ({"vae", "image_encoder"} for denoise), or None.
    """

    step: jax.Array
    rng: jax.Array
    params: Any
    ema: Any
    opt: Any
    encoders: Any = None


def init_model_state(params, tx: optax.GradientTransformation, seed: int, encoders=None) -> ModelTrainState:
    """A step-0 state: the EMA starts at `params` (a copy, so donation never sees one buffer twice)."""
    return ModelTrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(seed), params=params,
                           ema=jax.tree.map(jnp.array, params), opt=tx.init(params), encoders=encoders)


def gradients_shardings(state, replicated):
    """The shardings of a single-model step's gradients() outputs (gradient, losses, aux) given the state's: the
    gradient as the params, the rest replicated (sfv_jax.parallel.step_programs)."""
    return state.params, replicated, replicated


def apply_gradients(state: ModelTrainState, grads, losses: jax.Array, tx: optax.GradientTransformation,
                    ema_decay: float, next_rng: jax.Array, frozen: tuple[str, ...] = ()) -> tuple[ModelTrainState, dict]:
    """The optimiser update, the EMA and the non-finite guard; returns (new state, metrics).

    losses: the step's per-micro-batch losses (M,). frozen: top-level keys of params that keep their values
    (e.g. the VAE's encoder when only the decoder is fine-tuned): their gradient should already be zero; they
    are restored after the update so no optimiser term (weight decay) moves them.
    A step whose losses or updates are not finite changes nothing but the step counter and the rng (so the
    data and noise move on); the loop counts such steps.
    """
    updates, opt = tx.update(grads, state.opt, state.params)
    params = optax.apply_updates(state.params, updates)
    params = {**params, **{k: state.params[k] for k in frozen}}
    ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema, params)
    finite = jnp.all(jnp.isfinite(losses)) & jnp.isfinite(global_norm(updates))
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = state.replace(step=state.step + 1, rng=next_rng, params=keep(params, state.params),
                              ema=keep(ema, state.ema), opt=keep(opt, state.opt))
    metrics = dict(loss=jnp.mean(losses), grad_norm=global_norm(grads),
                   nonfinite=1.0 - finite.astype(jnp.float32))
    return new_state, metrics
