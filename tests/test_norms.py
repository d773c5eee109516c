"""GroupNorm against torch.nn.GroupNorm: per image and pooled over frames, with large channel means."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from sfv_jax.models import ModelOptions
from sfv_jax.models.layers import GroupNorm
from tests.reference import rel_err


@pytest.mark.parametrize("shape, groups", [((3, 9, 7, 64), 32), ((2, 5, 6, 4, 96), 32), ((4, 11, 48), 8)])
def test_group_norm_matches_torch(shape, groups):
    """(N, *pooled, C) channels-last; torch sees (N, C, *pooled). Channel means 20x the spread test the
    centred variance (a one-pass E[x^2] - E[x]^2 loses digits there)."""
    rng = np.random.default_rng(0)
    channels = shape[-1]
    x = (rng.standard_normal(shape) + 20 * rng.standard_normal(channels)).astype(np.float32)
    scale, bias = rng.standard_normal(channels).astype(np.float32), rng.standard_normal(channels).astype(np.float32)
    norm = GroupNorm(channels, groups, 1e-6, ModelOptions())
    norm.scale[...], norm.bias[...] = jnp.asarray(scale), jnp.asarray(bias)
    reference = torch.nn.GroupNorm(groups, channels, eps=1e-6)
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(scale))
        reference.bias.copy_(torch.from_numpy(bias))
        ref = reference(torch.from_numpy(np.moveaxis(x, -1, 1).copy())).numpy()
    out = np.moveaxis(np.asarray(jax.jit(lambda v: norm(v))(jnp.asarray(x))), -1, 1)
    err = rel_err(out, ref)
    print(f"GroupNorm {shape} / {groups} groups: rel L2 err {err:.2e} (bound 1e-6)")
    assert err <= 1e-6


def test_group_norm_computes_in_float32_and_returns_the_compute_dtype():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 4, 4, 64)) + 100.0, jnp.bfloat16)
    out = GroupNorm(64, 32, 1e-6, ModelOptions(dtype="bfloat16"))(x)
    assert out.dtype == jnp.bfloat16
    per_group = np.asarray(out, np.float32).reshape(2, -1, 32, 2)
    np.testing.assert_allclose(per_group.mean(axis=(1, 3)), 0.0, atol=2e-2)
    np.testing.assert_allclose(per_group.std(axis=(1, 3)), 1.0, atol=2e-2)
