"""SF-V's losses (docs/method.md section 4).

Discriminator outputs are {"spatial": [per-position logits], "temporal": [...]}, each (B, T, h_i, w_i).
Each head's loss averages its per-position terms; the total is the mean over the heads [ours] (8; 4 where
disc.heads keeps one family, the paper's ablation).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from sfv_jax.models.options import at_least_float32

R1_MODES = ("exact", "approx", "off")


def _heads(logits: dict) -> list[jax.Array]:
    return list(logits["spatial"]) + list(logits["temporal"])


def hinge_d_loss(real: dict, fake: dict) -> jax.Array:
    """mean over heads of [mean relu(1 - D(real)) + mean relu(1 + D(fake))]."""
    terms = [jnp.mean(jax.nn.relu(1.0 - r)) + jnp.mean(jax.nn.relu(1.0 + f)) for r, f in zip(_heads(real), _heads(fake))]
    return jnp.mean(jnp.stack(terms))


def generator_adv_loss(fake: dict) -> jax.Array:
    """mean over heads of -mean D(fake)."""
    return jnp.mean(jnp.stack([-jnp.mean(f) for f in _heads(fake)]))


def head_means(logits: dict) -> dict[str, jax.Array]:
    """Mean logit per head type present: {"spatial": scalar, "temporal": scalar} (a family with no heads left out)."""
    return {kind: jnp.mean(jnp.stack([jnp.mean(x) for x in logits[kind]])) for kind in ("spatial", "temporal")
            if logits[kind]}


def score(logits: dict) -> jax.Array:
    """Per-sample scalar D score: the mean over heads of each head's mean logit over positions, (B,)."""
    return jnp.mean(jnp.stack([x.reshape(x.shape[0], -1).mean(axis=1) for x in _heads(logits)]), axis=0)


def pseudo_huber(a: jax.Array, b: jax.Array, c_scale: float = 0.00054) -> jax.Array:
    """mean over samples of sqrt(||a - b||^2 + c^2) - c, c = c_scale * sqrt(d), d = elements per sample.

    a, b: (B, ...) latents (scaled by 0.18215).
    """
    d = a[0].size
    c = c_scale * (d ** 0.5)
    dtype = at_least_float32(jnp.promote_types(a.dtype, b.dtype))
    sq = jnp.sum(jnp.square(a.astype(dtype) - b.astype(dtype)).reshape(a.shape[0], -1), axis=1)
    return jnp.mean(jnp.sqrt(sq + c * c) - c)


def r1_penalty(d_score: Callable[[jax.Array], jax.Array], x: jax.Array, mode: str, key: jax.Array | None = None,
               approx_sigma: float = 0.1, score_x: jax.Array | None = None) -> jax.Array:
    """R1 on D's input.

    d_score: x (B, ...) -> per-sample score (B,) (samples independent).
    exact:  mean_b ||grad_x d_score(x)_b||^2 (one backward pass: the gradient of the sum).
    approx: mean_b (d_score(x)_b - d_score(x + N(0, approx_sigma^2))_b)^2 (Seaweed-APT's variant);
            score_x, when given, is d_score(x) already computed (saves one D pass).
    off:    0.
    """
    if mode == "off":
        return jnp.zeros((), jnp.float32)
    if mode == "exact":
        grad = jax.grad(lambda v: jnp.sum(d_score(v)))(x)
        return jnp.mean(jnp.sum(jnp.square(grad.astype(at_least_float32(grad.dtype))).reshape(x.shape[0], -1), axis=1))
    if mode == "approx":
        noisy = x + approx_sigma * jax.random.normal(key, x.shape, x.dtype)
        score_x = d_score(x) if score_x is None else score_x
        return jnp.mean(jnp.square(score_x - d_score(noisy)))
    raise ValueError(f"r1 mode {mode!r}: use one of {R1_MODES}")
