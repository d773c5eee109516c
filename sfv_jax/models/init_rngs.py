"""Parameter keys for building modules without mutable RNG state.

nnx.Rngs keeps its counter in a Variable; inside nnx.eval_shape every draw updates that
Variable with a tracer, and flax's sharding check on it makes tracing quadratic in the number
of parameters (30+ s for the tiny UNet, far more for SVD-XT). `StaticRngs` derives the i-th key
as fold_in(key(seed), i) with a Python counter instead: same determinism, no traced state.
"""

from __future__ import annotations

import jax


class StaticRngs:
    """Duck-types the part of nnx.Rngs that layer constructors use: rngs.params() and rngs()."""

    def __init__(self, seed: int = 0):
        self._base = jax.random.key(seed)
        self._count = 0

    def __call__(self) -> jax.Array:
        self._count += 1
        return jax.random.fold_in(self._base, self._count)

    params = __call__
    default = __call__
