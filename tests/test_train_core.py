"""SF-V training core: noise samplers and the losses' formulas (CPU, float32).

The step itself: tests/test_train_step.py, test_train_r1.py, test_train_remat.py, test_train_learning.py;
the discriminator: tests/test_discriminator.py."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sfv_jax.config import load_config
from sfv_jax.train import losses
from sfv_jax.train.noise import NoiseSampler, discriminator_probs, generator_levels
from sfv_jax.train.state import SFVModels

from tests.train_helpers import make_batch


# ---------------------------------------------------------------- noise levels

def test_generator_levels_are_the_papers():
    levels = generator_levels(4, 0.002, 700.0, 7.0)
    np.testing.assert_allclose(levels, [2.269, 70.54, 700.0], atol=1e-3, rtol=0)


def test_samplers_match_closed_form_probabilities():
    """1e5 draws each; max |empirical - p| <= 5 binomial standard deviations (+1e-4) per level."""
    sfv = load_config("configs/sfv_svd.py").sfv
    sampler = NoiseSampler.from_config(sfv)
    n = 100_000

    g = np.asarray(jax.jit(lambda k: sampler.generator_sigma(k, n))(jax.random.PRNGKey(1)))
    freq = np.array([(g == np.float32(level)).mean() for level in sampler.g_levels])
    assert freq.sum() == 1.0
    p = np.full(3, 1 / 3)
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-4), freq

    d = np.asarray(jax.jit(lambda k: sampler.discriminator_sigma(k, n))(jax.random.PRNGKey(2)))
    levels, probs = discriminator_probs(sfv.td, sfv.sigma_min, sfv.sigma_max, sfv.rho, sfv.p_mean, sfv.p_std)
    idx = np.searchsorted(levels.astype(np.float32), d)
    assert np.all(levels.astype(np.float32)[idx] == d)
    counts = np.bincount(idx, minlength=len(levels)) / n
    bound = 5 * np.sqrt(probs * (1 - probs) / n) + 1e-4
    assert np.all(np.abs(counts - probs) <= bound), np.max(np.abs(counts - probs) - bound)
    # Closed form: p(s_t) ~ erf(...) differences; the median level is ~0.37 (spec section 3).
    z = lambda s: math.erf((math.log(s) - sfv.p_mean) / (math.sqrt(2) * sfv.p_std))
    t = 500
    np.testing.assert_allclose(probs[t] / probs[t + 1],
                               (z(levels[t]) - z(levels[t - 1])) / (z(levels[t + 1]) - z(levels[t])), rtol=1e-9)
    assert 0.3 < np.median(d) < 0.45


# ---------------------------------------------------------------- losses

def test_hinge_and_generator_losses_match_their_formulas():
    rng = np.random.default_rng(0)
    mk = lambda: {k: [jnp.asarray(rng.standard_normal((2, 3, 4, 4))) for _ in range(2)] for k in ("spatial", "temporal")}
    real, fake = mk(), mk()
    heads = lambda d: d["spatial"] + d["temporal"]
    want = np.mean([np.mean(np.maximum(0, 1 - np.asarray(r))) + np.mean(np.maximum(0, 1 + np.asarray(f)))
                    for r, f in zip(heads(real), heads(fake))])
    np.testing.assert_allclose(losses.hinge_d_loss(real, fake), want, rtol=1e-6)
    np.testing.assert_allclose(losses.generator_adv_loss(fake), -np.mean([np.mean(f) for f in heads(fake)]),
                               rtol=1e-6)


def test_pseudo_huber_uses_icts_constant():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((3, 2, 4, 4, 4)), rng.standard_normal((3, 2, 4, 4, 4))
    c = 0.00054 * np.sqrt(2 * 4 * 4 * 4)
    want = np.mean(np.sqrt(((a - b) ** 2).reshape(3, -1).sum(1) + c * c) - c)
    np.testing.assert_allclose(losses.pseudo_huber(jnp.asarray(a), jnp.asarray(b)), want, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_discriminator():
    """A 1-block, attention-free SFVDiscriminator with random weights, and inputs for it."""
    config = load_config("configs/tiny_sfv.py", [
        "unet.layers_per_block=1", "unet.block_out_channels=(32,)", "unet.down_block_types=('DownBlockSpatioTemporal',)",
        "unet.up_block_types=('UpBlockSpatioTemporal',)", "unet.num_attention_heads=(2,)"])
    models = SFVModels(config)
    backbone = models.random_generator_params(3)
    from sfv_jax.models.discriminator import backbone_params_from_unet
    bb = {"backbone": backbone_params_from_unet(backbone, models.abstract_backbone["backbone"])}
    heads = models.random_head_params(4)
    batch = make_batch(config, batch=3, height=6, width=5, seed=5)
    sigma = jnp.asarray([0.3, 1.7, 0.05], jnp.float32)
    x = batch["latents"] + sigma[:, None, None, None, None] * jax.random.normal(jax.random.PRNGKey(0),
                                                                                 batch["latents"].shape)

    def score(x, sigma=sigma, batch=batch):
        d = models.discriminator(bb, heads)
        return losses.score(d(x, sigma, batch["image_latent"], batch["clip"], batch["added_time_ids"]))
    return score, x, sigma, batch


def test_r1_approx_equals_its_formula_and_off_is_zero(tiny_discriminator):
    """Approx R1 is mean_b (D(x)_b - D(x + N(0, 0.1^2))_b)^2, also when D(x) is passed in precomputed.

    Catches: the perturbation scaled by the wrong sigma, a precomputed D(x) ignored or taken of the wrong input.
    (Exact R1 is checked inside the real step, in float64: tests/test_train_r1.py.)"""
    score, x, _, _ = tiny_discriminator
    key = jax.random.PRNGKey(7)
    got = losses.r1_penalty(score, x, "approx", key, 0.1)
    noisy = x + 0.1 * jax.random.normal(key, x.shape)
    np.testing.assert_allclose(got, np.mean((np.asarray(score(x)) - np.asarray(score(noisy))) ** 2), rtol=1e-5)
    reused = losses.r1_penalty(score, x, "approx", key, 0.1, score_x=score(x))
    np.testing.assert_allclose(reused, got, rtol=1e-6)
    assert float(losses.r1_penalty(score, x, "off")) == 0.0
    with pytest.raises(ValueError, match="r1 mode"):
        losses.r1_penalty(score, x, "typo")


