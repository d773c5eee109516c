"""Whole-tree reductions of a train step (global norm, finiteness, norm clipping) whose compile time grows
linearly with the number of leaves.

The obvious form, `sum(jnp.sum(x * x) for x in leaves)`, makes XLA fuse the chain of per-leaf scalars into one
fusion that its CPU fusion pass re-scans for every candidate operand, so the compile grows superlinearly with the
leaf count (a UNet has ~1400 parameter leaves). Measured with jax 0.10.2 on XLA:CPU, 2000 small leaves: the norm
40.4 s to compile against 6.4 s here; the finiteness of the tiny UNet's params and EMA (2852 leaves) 138 s against
~10 s. The remedy: stack the per-leaf partials into one vector behind `lax.optimization_barrier`, which XLA can
neither fuse into a chain nor rewrite into one (it turns a reduce of a concatenate into a chain of adds), and
reduce that vector. The per-leaf partials are float32, or float64 where any leaf is (a float32 norm would round a
float64 run's clipping and its non-finite guard to float32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _per_leaf(partial, tree) -> jax.Array | None:
    """(number of leaves,) vector of partial(leaf), or None for a tree without leaves."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return None
    return jax.lax.optimization_barrier(jnp.stack([partial(x) for x in leaves]))


def global_norm(tree) -> jax.Array:
    """() float32 (float64 if a leaf is): the L2 norm of all of tree's leaves together (optax.global_norm's value)."""
    leaves = jax.tree.leaves(tree)
    dtype = jnp.result_type(jnp.float32, *(x.dtype for x in leaves))
    squares = _per_leaf(lambda x: jnp.sum(jnp.square(x.astype(dtype))), leaves)
    return jnp.zeros((), dtype) if squares is None else jnp.sqrt(jnp.sum(squares))


def all_finite(tree) -> jax.Array:
    """() bool: every floating leaf of `tree` is free of NaN and inf (other leaves are ignored)."""
    floating = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    flags = _per_leaf(lambda x: jnp.all(jnp.isfinite(x)), floating)
    return jnp.asarray(True) if flags is None else jnp.all(flags)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """optax.clip_by_global_norm (the same scaling: updates * max_norm / norm when the norm exceeds max_norm) with
    this module's norm."""

    def update(updates, state, params=None):
        del params
        norm = global_norm(updates)
        clipped = jax.tree.map(lambda u: jnp.where(norm < max_norm, u, (u / norm.astype(u.dtype)) * max_norm), updates)
        return clipped, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
