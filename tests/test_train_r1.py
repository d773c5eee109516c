"""Exact R1 inside the real step's D loss, in float64 (jax_enable_x64) on a micro discriminator.

R1 = mean_b ||grad_x D(x)_b||^2 through the frozen backbone (docs/method.md section 4); D's update needs the
gradient of r1_gamma * R1 with respect to the heads, a double backward pass. Both are checked against
computations that share nothing with the step's: per-sample gradients taken one sample at a time, and central
finite differences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sfv_jax.train.state import SFVModels, new_state
from sfv_jax.train.step import make_train_step
from tests.train_helpers import make_batch, micro_config

FD_BOUND = 1e-4


@pytest.fixture(scope="module")
def r1_setup():
    """The step's d_loss in float64 and its inputs: (train_step, state, micro-batch, sigma', eps', fake)."""
    with jax.enable_x64(True):
        config = micro_config("sfv.r1_mode=exact", "sfv.r1_gamma=0.5", "model.dtype=float64",
                              "model.param_dtype=float64", "global_batch_size=3", "grad_accum_steps=1")
        models = SFVModels(config)
        train_step = make_train_step(config, models)
        state = jax.tree.map(lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                             new_state(config, models))
        batch = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), make_batch(config, height=6, width=5, seed=3))
        rng = np.random.default_rng(4)
        sigma = jnp.asarray([0.3, 1.7, 0.05], jnp.float64)
        eps = jnp.asarray(rng.standard_normal(batch["latents"].shape))
        fake = batch["latents"] + jnp.asarray(0.3 * rng.standard_normal(batch["latents"].shape))
        return train_step, state, batch, sigma, eps, fake


def _r1(train_step, state, batch, sigma, eps, fake, heads=None):
    """R1 as the step's D loss computes it (its aux), for the given heads."""
    heads = state.d_heads if heads is None else heads
    return train_step.d_loss(heads, state.backbone, batch, fake, sigma, eps, jax.random.PRNGKey(0))[1]["r1"]


def test_exact_r1_equals_per_sample_input_gradient_norms(r1_setup, measured):
    """The step's R1 equals mean over samples of ||grad_x score(x_b)||^2, each sample's gradient taken through D
    on that sample alone, at x_b = x0_b + sigma'_b eps_b (the real clip).

    Catches: R1 taken at the fake inputs, a gradient of the batch mean (scaled by 1/B^2), missing the square,
    the gradient with respect to the c_in-scaled input instead of D's input."""
    train_step, state, batch, sigma, eps, fake = r1_setup
    with jax.enable_x64(True):
        got = float(jax.jit(lambda: _r1(*r1_setup))())
        real_in = batch["latents"] + sigma[:, None, None, None, None] * eps
        norms = []
        for b in range(real_in.shape[0]):
            one = {k: v[b:b + 1] for k, v in batch.items()}
            score = lambda x: jnp.mean(jnp.stack([
                jnp.mean(h) for kind in ("spatial", "temporal")
                for h in train_step.discriminate(state.backbone, state.d_heads, x, sigma[b:b + 1], one)[kind]]))
            g = jax.grad(score)(real_in[b:b + 1])
            assert g.dtype == jnp.float64
            norms.append(float(jnp.sum(g ** 2)))
    measured(f"R1 in the step {got:.10e} vs per-sample gradients {np.mean(norms):.10e} (rtol 1e-10)")
    np.testing.assert_allclose(got, np.mean(norms), rtol=1e-10)
    assert got > 0


def test_r1_head_gradient_matches_central_finite_differences(r1_setup, measured):
    """d(gamma * R1)/d(heads), as the step differentiates it, along random directions and along single
    coordinates of each head's layers, against central differences in float64; relative error <= 1e-4.

    Catches: the R1 term detached from the heads (zero gradient), a first-order-only gradient of R1 (the input
    gradient treated as a constant), gamma applied twice or not at all."""
    train_step, state, batch, sigma, eps, fake = r1_setup
    gamma = train_step.sfv.r1_gamma
    with jax.enable_x64(True):
        f = jax.jit(lambda h: gamma * _r1(train_step, state, batch, sigma, eps, fake, h))
        grad = jax.jit(jax.grad(lambda h: gamma * _r1(train_step, state, batch, sigma, eps, fake, h)))(state.d_heads)
        leaves, treedef = jax.tree.flatten(state.d_heads)
        rng = np.random.default_rng(0)
        directions = []
        for _ in range(2):  # random directions over every head parameter
            directions.append([rng.standard_normal(x.shape) for x in leaves])
        for name in ("conv1", "conv2", "out"):  # one coordinate of a layer of a spatial and a temporal head
            for kind in ("spatial_heads", "temporal_heads"):
                paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state.d_heads)[0]]
                target = next(i for i, p in enumerate(paths) if kind in p and f"'{name}'" in p and "kernel" in p)
                one_hot = [np.zeros(x.shape) for x in leaves]
                one_hot[target].flat[rng.integers(leaves[target].size)] = 1.0
                directions.append(one_hot)
        worst = 0.0
        for v in directions:
            scale = 1e-7 * np.sqrt(sum(np.sum(x ** 2) for x in leaves)) / np.sqrt(sum(np.sum(x ** 2) for x in v))
            shift = lambda s: jax.tree.unflatten(treedef, [x + s * scale * d for x, d in zip(leaves, v)])
            fd = (float(f(shift(1.0))) - float(f(shift(-1.0)))) / (2 * scale)
            analytic = float(sum(np.sum(np.asarray(g) * d) for g, d in zip(jax.tree.leaves(grad), v)))
            err = abs(fd - analytic) / max(abs(fd), 1e-300)
            worst = max(worst, err)
            assert abs(analytic) > 0 and err <= FD_BOUND, (fd, analytic, err)
    measured(f"gamma * R1 head gradient vs central differences: worst relative error {worst:.2e} "
          f"over {len(directions)} directions (bound {FD_BOUND:.0e})")
