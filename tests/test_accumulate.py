"""Gradient accumulation (sfv_jax.train.accumulate): micro-batch split, the scanned and unrolled loops."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sfv_jax.train.accumulate import mean_gradient, micro_batch_loop, micro_batches


def _loss(params, x, y):
    """A small conv net's squared error: (loss, aux) with aux the per-row prediction mean."""
    h = jax.lax.conv_general_dilated(x, params["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    pred = jnp.tanh(h + params["bias"]).mean(axis=(1, 2)) @ params["head"]
    return jnp.mean((pred - y) ** 2), pred.mean(axis=1)


def test_micro_batches_are_strided_rows():
    """(6, 2) rows split into 3 micro-batches: micro-batch m holds rows m, m + 3. Catches contiguous blocks (which
    would put one data shard's rows in one micro-batch) and a silent remainder."""
    micro = micro_batches({"x": jnp.arange(12).reshape(6, 2)}, 3)["x"]
    np.testing.assert_array_equal(micro[:, :, 0], [[0, 6], [2, 8], [4, 10]])
    with pytest.raises(ValueError, match="does not split"):
        micro_batches({"x": jnp.zeros((5, 1))}, 2)


@pytest.mark.parametrize("loop", ["scan", "unroll"])
def test_mean_gradient_is_the_mean_of_the_micro_batch_gradients(loop):
    """Both loops return the mean over 4 micro-batches of each one's gradient, its losses and aux stacked in order
    (float32, relative 1e-5 against per-micro-batch jax.grad calls). Catches a sum not divided by M, gradients
    of the last micro-batch only (a carry overwritten), or losses stacked out of order."""
    keys = jax.random.split(jax.random.key(0), 5)
    params = {"kernel": jax.random.normal(keys[0], (3, 3, 2, 4)) * 0.3, "bias": jnp.zeros(4),
              "head": jax.random.normal(keys[1], (4, 3))}
    x = jax.random.normal(keys[2], (8, 6, 6, 2))
    y = jax.random.normal(keys[3], (8, 3))
    micro = micro_batches({"x": x, "y": y}, 4)
    grads, losses, aux = jax.jit(lambda p: mean_gradient(_loss, p, (micro["x"], micro["y"]), 4, loop))(params)
    per = [jax.value_and_grad(_loss, has_aux=True)(params, micro["x"][m], micro["y"][m]) for m in range(4)]
    want = jax.tree.map(lambda *g: sum(g) / 4, *[g for _, g in per])
    for got, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(losses, [l for (l, _), _ in per], rtol=1e-6)
    np.testing.assert_allclose(aux, np.stack([a for (_, a), _ in per]), rtol=1e-6)


def test_auto_loop_scans_only_several_micro_batches():
    """"auto" is no loop for one micro-batch and a scan for several; an unknown loop name is refused. Catches a
    one-iteration scan (XLA:CPU runs a loop body's convolution gradients ~20x slower) or a silent fallback."""
    config = lambda accum, loop: ml_collections.ConfigDict({"grad_accum_steps": accum, "micro_batch_loop": loop})
    assert micro_batch_loop(config(1, "auto")) == "unroll"
    assert micro_batch_loop(config(4, "auto")) == "scan"
    assert micro_batch_loop(config(4, "unroll")) == "unroll"
    with pytest.raises(ValueError, match="micro_batch_loop='loop'"):
        micro_batch_loop(config(4, "loop"))
