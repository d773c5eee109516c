"""SF-V training core: noise samplers, losses, discriminator, and the pure train step (CPU, float32)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sfv_jax.config import load_config
from sfv_jax.models.discriminator import SFVDiscriminator
from sfv_jax.train import losses
from sfv_jax.train.noise import NoiseSampler, discriminator_probs, generator_levels
from sfv_jax.train.state import SFVModels, new_state
from sfv_jax.train.step import make_train_step, reconstruction_eval

# One cross-attention block with one layer: every layer type of the UNet and the discriminator in the
# smallest XLA program (the gradient of the 4-block tiny UNet takes minutes to compile on 2 CPU cores).
MICRO_UNET = ("unet.layers_per_block=1", "unet.block_out_channels=(32,)",
              "unet.down_block_types=('CrossAttnDownBlockSpatioTemporal',)",
              "unet.up_block_types=('CrossAttnUpBlockSpatioTemporal',)", "unet.num_attention_heads=(2,)")


def micro_config(*overrides: str):
    return load_config("configs/tiny_sfv.py", list(MICRO_UNET) + ["sfv.r1_mode=approx", *overrides])


def make_batch(config, batch: int | None = None, height: int = 8, width: int = 8, seed: int = 0) -> dict:
    """Random batch: latents (B,T,h,w,4), image_latent (B,h,w,4), clip (B,1,D), added_time_ids (B,3)."""
    rng = np.random.default_rng(seed)
    b = batch or config.global_batch_size
    sfv = config.sfv
    return dict(
        latents=jnp.asarray(0.5 * rng.standard_normal((b, config.data.num_frames, height, width, 4)), jnp.float32),
        image_latent=jnp.asarray(rng.standard_normal((b, height, width, 4)), jnp.float32),
        clip=jnp.asarray(rng.standard_normal((b, 1, config.unet.cross_attention_dim)), jnp.float32),
        added_time_ids=jnp.asarray(np.tile([[sfv.fps - 1, sfv.motion_bucket_id, sfv.noise_aug_strength]], (b, 1)),
                                   jnp.float32))


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


def test_r1_exact_equals_direct_per_sample_gradients(tiny_discriminator):
    score, x, sigma, batch = tiny_discriminator
    got = jax.jit(lambda x: losses.r1_penalty(score, x, "exact"))(x)
    norms = []
    for b in range(x.shape[0]):  # each sample through D alone: no cross-sample terms
        one = {k: v[b:b + 1] for k, v in batch.items()}
        g = jax.grad(lambda xb: score(xb, sigma[b:b + 1], one)[0])(x[b:b + 1])
        norms.append(float(jnp.sum(g.astype(jnp.float64) ** 2)))
    np.testing.assert_allclose(float(got), np.mean(norms), rtol=1e-5)
    assert float(got) > 0


def test_r1_approx_equals_its_formula_and_off_is_zero(tiny_discriminator):
    score, x, _, _ = tiny_discriminator
    key = jax.random.PRNGKey(7)
    got = losses.r1_penalty(score, x, "approx", key, 0.1)
    noisy = x + 0.1 * jax.random.normal(key, x.shape)
    np.testing.assert_allclose(got, np.mean((np.asarray(score(x)) - np.asarray(score(noisy))) ** 2), rtol=1e-5)
    assert float(losses.r1_penalty(score, x, "off")) == 0.0
    with pytest.raises(ValueError, match="r1 mode"):
        losses.r1_penalty(score, x, "typo")


# ---------------------------------------------------------------- discriminator structure

def test_discriminator_has_encoder_backbone_and_eight_heads():
    config = load_config("configs/tiny_sfv.py")
    models = SFVModels(config)
    assert set(models.abstract_backbone["backbone"]) == {"conv_in", "time_embedding", "add_embedding", "down_blocks"}
    assert len(models.abstract_heads["spatial_heads"]) == 4 and len(models.abstract_heads["temporal_heads"]) == 4
    # Backbone parameters equal the generator's encoder-half parameters, name for name and shape for shape.
    flat = lambda t: {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(t)[0]}
    g, bb = flat(models.abstract_g), flat(models.abstract_backbone["backbone"])
    assert all(g[k] == v for k, v in bb.items()) and len(bb) < len(g)
    d = models.discriminator(models.abstract_backbone, models.abstract_heads)
    batch = make_batch(config, batch=2, height=16, width=12)
    out = jax.eval_shape(lambda d, x: d(x, jnp.ones((2,)), batch["image_latent"], batch["clip"],
                                        batch["added_time_ids"]), d, batch["latents"])
    sizes = [(8, 6), (4, 3), (2, 2), (2, 2)]  # after each block's downsampler (16x12 input)
    for kind in ("spatial", "temporal"):
        assert [o.shape for o in out[kind]] == [(2, config.data.num_frames, h, w) for h, w in sizes]


# ---------------------------------------------------------------- the train step

@pytest.fixture(scope="module")
def compiled_step():
    """The micro config's step, compiled once: (config, models, jitted step, initial-state factory, batch)."""
    config = micro_config("optim.g_lr=2e-3", "optim.d_lr=1e-3", "global_batch_size=2", "grad_accum_steps=1")
    models = SFVModels(config)
    fresh = jax.jit(lambda: new_state(config, models))
    step = jax.jit(make_train_step(config, models))
    batch = make_batch(config)
    return config, models, step, fresh, batch


def _equal(a, b) -> bool:
    return all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_step_freezes_backbone_and_keeps_updates_apart(compiled_step):
    config, models, step, fresh, batch = compiled_step
    state0 = fresh()
    state = state0
    for _ in range(3):
        state, metrics = step(state, batch)
    assert int(state.step) == 3
    assert _equal(state.backbone, state0.backbone), "frozen backbone changed"
    assert not _equal(state.g_params, state0.g_params) and not _equal(state.d_heads, state0.d_heads)
    for name in ("g_loss", "d_loss", "recon", "r1", "g_grad_norm", "d_grad_norm", "d_real_spatial",
                 "d_fake_temporal", "sigma_d_mean", "sigma_g_mean"):
        assert np.isfinite(float(metrics[name])), name
    # The G update alone (D learning rate 0) never touches D params; the D update alone never touches G.
    with_lr = lambda opt, lr: opt._replace(hyperparams={**opt.hyperparams, "learning_rate": jnp.float32(lr)})
    s1, _ = step(state0.replace(d_opt=with_lr(state0.d_opt, 0.0)), batch)
    assert _equal(s1.d_heads, state0.d_heads) and not _equal(s1.g_params, state0.g_params)
    s2, _ = step(fresh().replace(g_opt=with_lr(state0.g_opt, 0.0)), batch)
    assert _equal(s2.g_params, state0.g_params) and not _equal(s2.d_heads, state0.d_heads)
    assert _equal(s2.backbone, state0.backbone)


def test_same_seed_is_bit_identical(compiled_step):
    _, _, step, fresh, batch = compiled_step
    runs = []
    for _ in range(2):
        state = fresh()
        for _ in range(2):
            state, metrics = step(state, batch)
        runs.append((state, metrics))
    assert _equal(runs[0][0], runs[1][0]) and _equal(runs[0][1], runs[1][1])


@pytest.mark.slow  # ~95 s on 2 shared CPU cores (200 steps + an eval compile)
def test_200_steps_halve_the_reconstruction_loss(compiled_step):
    config, models, step, fresh, batch = compiled_step
    evaluate = jax.jit(lambda p: reconstruction_eval(config, models, p, batch))
    state = fresh()
    before = float(evaluate(state.g_params))
    for _ in range(200):
        state, metrics = step(state, batch)
        assert np.isfinite(float(metrics["g_adv"])) and np.isfinite(float(metrics["d_loss"]))
    after = float(evaluate(state.g_params))
    print(f"reconstruction {before:.4f} -> {after:.4f}; last g_adv {float(metrics['g_adv']):.4f}, "
          f"d_loss {float(metrics['d_loss']):.4f}")
    assert after <= 0.5 * before, (before, after)
