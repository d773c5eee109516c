"""The SF-V train step against its definition (docs/method.md sections 3-5), on the micro config in float32.

Every test here shares one compiled step (the `micro_step` fixture in conftest.py) and one compiled
reference program (`reference` below) that recomputes each gradient from the step's public loss functions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sfv_jax.train.state import SFVModels
from sfv_jax.train.step import make_train_step
from tests.train_helpers import micro_config, tree_equal, update_errors


def _with_lr(opt_state, lr):
    return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": jnp.float32(lr)})


def test_step_freezes_backbone_and_keeps_updates_apart(micro_step):
    """Three steps move G and the heads, never the backbone; with D's learning rate 0 the heads stay
    bit-identical while G moves, and the other way round.

    Catches: the backbone in the optimised tree, a G update written into the heads (or back), an EMA of D."""
    state0 = micro_step.fresh()
    state = state0
    for _ in range(3):
        state, metrics = micro_step.step(state, micro_step.batch)
    assert int(state.step) == 3
    assert tree_equal(state.backbone, state0.backbone), "frozen backbone changed"
    assert not tree_equal(state.g_params, state0.g_params) and not tree_equal(state.d_heads, state0.d_heads)
    for name in ("g_loss", "d_loss", "recon", "r1", "g_grad_norm", "d_grad_norm", "d_real_spatial",
                 "d_fake_temporal", "sigma_d_mean", "sigma_g_mean"):
        assert np.isfinite(float(metrics[name])), name
    s1, _ = micro_step.step(state0.replace(d_opt=_with_lr(state0.d_opt, 0.0)), micro_step.batch)
    assert tree_equal(s1.d_heads, state0.d_heads) and not tree_equal(s1.g_params, state0.g_params)
    s2, _ = micro_step.step(micro_step.fresh().replace(g_opt=_with_lr(state0.g_opt, 0.0)), micro_step.batch)
    assert tree_equal(s2.g_params, state0.g_params) and not tree_equal(s2.d_heads, state0.d_heads)
    assert tree_equal(s2.backbone, state0.backbone)


def test_same_seed_is_bit_identical(micro_step):
    """Two runs from the same state and batch agree bit for bit. Catches: host randomness or an rng not threaded
    through the state."""
    runs = []
    for _ in range(2):
        state = micro_step.fresh()
        for _ in range(2):
            state, metrics = micro_step.step(state, micro_step.batch)
        runs.append((state, metrics))
    assert tree_equal(runs[0][0], runs[1][0]) and tree_equal(runs[0][1], runs[1][1])


def test_logged_losses_recombine_with_the_configured_weights(micro_step):
    """g_loss = g_adv + lambda_recon * recon and d_loss = hinge + r1_gamma * R1, per micro-batch and as logged,
    with this config's unusual weights (0.25, 0.5).

    Catches: a weight hard-coded to the paper's 0.1 / 1e-5, R1 or the reconstruction left out of the optimised
    loss, a logged part that is not the one optimised."""
    config = micro_step.config
    lam, gamma = config.sfv.lambda_recon, config.sfv.r1_gamma
    assert (lam, gamma) == (0.25, 0.5)
    _, aux = micro_step.gradients(micro_step.fresh(), micro_step.batch)
    aux = jax.tree.map(np.asarray, aux)
    np.testing.assert_allclose(aux["g_loss"], aux["g_adv"] + lam * aux["recon"], rtol=1e-6)
    np.testing.assert_allclose(aux["d_loss"], aux["hinge"] + gamma * aux["r1"], rtol=1e-6)
    _, metrics = micro_step.step(micro_step.fresh(), micro_step.batch)
    np.testing.assert_allclose(metrics["g_loss"], metrics["g_adv"] + lam * metrics["recon"], rtol=1e-6)
    np.testing.assert_allclose(metrics["d_loss"], metrics["hinge"] + gamma * metrics["r1"], rtol=1e-6)
    # The check can tell the weights apart: the paper's weights would miss by over 100x its tolerance.
    assert abs((lam - 0.1) * metrics["recon"]) > 1e-4 * abs(metrics["g_loss"])
    assert abs((gamma - 1e-5) * metrics["r1"]) > 1e-4 * abs(metrics["d_loss"]) > 0


@pytest.fixture(scope="module")
def reference(micro_step):
    """Per micro-batch, straight from the step's loss functions with the step's keys: G's gradient split into its
    adversarial and reconstruction parts, D's gradient, and D's loss with the fake set equal to the real clip.

    Returns f(state, batch) -> dict of (M, ...) stacked trees (compiled once)."""
    train_step = micro_step.train_step

    def one(state, micro, keys):
        backbone = jax.lax.stop_gradient(state.backbone)
        g_part = lambda name: jax.grad(lambda p: train_step.g_loss(p, backbone, state.d_heads, micro, keys[:4])[1][
            name])(state.g_params)
        _, g_aux = train_step.g_loss(state.g_params, backbone, state.d_heads, micro, keys[:4])
        d_args = (micro, g_aux["x0_hat"], g_aux["sigma_d"], g_aux["eps_d"], keys[4])
        d_grad = jax.grad(lambda h: train_step.d_loss(h, backbone, *d_args)[0])(state.d_heads)
        _, same = train_step.d_loss(state.d_heads, backbone, micro, micro["latents"], *d_args[2:])
        return dict(g_adv=g_part("g_adv"), recon=g_part("recon"), d=d_grad, same=same)

    def f(state, batch):
        _, keys = train_step.step_keys(state.rng)
        return jax.lax.map(lambda xs: one(state, *xs), (train_step.micro_batches(batch), keys))
    return jax.jit(f)


def test_gradients_come_from_their_own_losses(micro_step, reference, measured):
    """G's gradient is mean_m [grad g_adv + lambda * grad recon] with a non-zero adversarial part (it flows back
    through D's frozen backbone and heads); the heads' gradient is mean_m grad d_loss and nothing else.

    Catches: a stop_gradient on the fake before D in G's loss (zero adversarial gradient), G's loss also
    differentiated into the heads (a joint loss), micro-batch gradients summed instead of averaged."""
    state = micro_step.fresh()
    grads, _ = micro_step.gradients(state, micro_step.batch)
    ref = reference(state, micro_step.batch)
    lam = micro_step.config.sfv.lambda_recon
    want_g = jax.tree.map(lambda a, r: np.mean(a + lam * r, axis=0), ref["g_adv"], ref["recon"])
    want_d = jax.tree.map(lambda d: np.mean(d, axis=0), ref["d"])
    zeros = lambda tree: jax.tree.map(np.zeros_like, tree)
    for name, got, want in (("G", grads["g"], want_g), ("D heads", grads["d"], want_d)):
        worst = update_errors(zeros(want), got, want)
        measured(f"{name} gradient vs its loss recomputed: worst leaf {worst[0]}")
        assert worst[0][0] <= 1e-4, worst[:3]
    adv_norm = np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(ref["g_adv"])))
    recon_norm = np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(ref["recon"])))
    assert adv_norm > 1e-3 * recon_norm > 0, (adv_norm, recon_norm)


def test_hinge_re_noises_real_and_fake_with_the_same_sigma_and_eps(micro_step, reference):
    """With the fake equal to the real clip, D's logits on both halves are identical.

    Catches: separate sigma' or eps draws for the real and the fake clips (D could then tell them apart by
    their noise, which the paper's shared re-noising rules out)."""
    same = reference(micro_step.fresh(), micro_step.batch)["same"]
    for kind in ("spatial", "temporal"):
        np.testing.assert_array_equal(same[f"d_real_{kind}"], same[f"d_fake_{kind}"])
    assert np.all(np.asarray(same["hinge"]) > 0)


def _sm3_numpy(g, mu, nu, b1, b2, eps):
    """optax.scale_by_sm3's update of one tensor from its definition (SM3-II with b2 averaging), in float64:
    accumulator = (1 - b2) g^2 + b2 * min over axes of the per-axis maxima (the tensor itself for rank < 2),
    u = g / sqrt(accumulator + eps), momentum nu = (1 - b1) u + b1 nu. Returns (nu, new per-axis maxima)."""
    g = g.astype(np.float64)
    if g.ndim < 2:
        acc = (1 - b2) * g ** 2 + b2 * mu[0]
        new_mu = [acc]
    else:
        shaped = [m.reshape([-1 if j == i else 1 for j in range(g.ndim)]) for i, m in enumerate(mu)]
        acc = (1 - b2) * g ** 2 + b2 * np.minimum.reduce(np.broadcast_arrays(*shaped))
        new_mu = [acc.max(axis=tuple(j for j in range(g.ndim) if j != i)) for i in range(g.ndim)]
    u = np.where(acc > 0, g / np.sqrt(acc + eps), 0.0)
    return (1 - b1) * u + b1 * nu, new_mu


def test_sm3_and_ema_updates_equal_a_numpy_recomputation(micro_step):
    """The second step's parameter, SM3 and EMA updates (from the first step's optimiser state, so the per-axis
    accumulators are non-zero) equal numpy's from the same gradients: params -= lr * nu, ema = 0.95 ema + 0.05 p.

    Catches: SM3 with the wrong b1/b2, Adam in its place, the learning rate applied twice or with the wrong sign,
    the EMA taken of the old parameters or with the decay reversed."""
    config, apply = micro_step.config, micro_step.apply
    optim = config.optim
    state1, _ = micro_step.step(micro_step.fresh(), micro_step.batch)
    grads, aux = micro_step.gradients(state1, micro_step.batch)
    state2, _ = apply(state1, grads, aux)
    host = lambda t: jax.tree.map(lambda x: np.asarray(x, np.float64), t)
    for params, opt, grad, new_params, new_opt, lr in (
            (state1.g_params, state1.g_opt, grads["g"], state2.g_params, state2.g_opt, optim.g_lr),
            (state1.d_heads, state1.d_opt, grads["d"], state2.d_heads, state2.d_opt, optim.d_lr)):
        sm3 = opt.inner_state[0]
        leaves = jax.tree_util.tree_structure(params)
        flat = lambda t: leaves.flatten_up_to(t)
        want_params, want_nu = [], []
        for p, g, mu, nu in zip(flat(host(params)), flat(host(grad)), flat(host(sm3.mu)), flat(host(sm3.nu))):
            new_nu, _ = _sm3_numpy(g, mu, nu, optim.b1, optim.b2, optim.eps)
            want_nu.append(new_nu)
            want_params.append(p - lr * new_nu)
        # The momentum is compared per leaf (1e-5 of its norm: float32 arithmetic); the parameters per element at
        # float32 resolution: storing p - lr * nu rounds to an ulp of |p|, which for small updates of norm scales
        # near 1 is a visible share of the update.
        worst = update_errors([np.zeros_like(n) for n in want_nu], flat(host(new_opt.inner_state[0].nu)), want_nu)
        print(f"SM3 momentum vs numpy: worst leaf {worst[0]}")
        assert worst[0][0] <= 1e-5, worst[:3]
        for p1, got, want in zip(flat(host(params)), flat(host(new_params)), want_params):
            update = np.abs(want - p1)
            bound = 4 * np.finfo(np.float32).eps * (np.abs(p1) + np.abs(want)) + 1e-5 * update + 1e-6 * update.max()
            assert np.all(np.abs(got - want) <= bound), np.max(np.abs(got - want) - bound)
        assert int(new_opt.count) == int(opt.count) + 1
    # The EMA's update 0.05 (p - ema) is tiny next to the values it is added to (norm scales near 1), so it is
    # compared at float32 resolution: within 4 float32 ulps of |ema| + |p| per element of the exact value.
    decay = optim.ema_decay
    assert decay == 0.95
    ulp = np.finfo(np.float32).eps
    for e1, p2, e2 in zip(jax.tree.leaves(host(state1.g_ema)), jax.tree.leaves(host(state2.g_params)),
                          jax.tree.leaves(host(state2.g_ema))):
        want = decay * e1 + (1 - decay) * p2
        assert np.all(np.abs(e2 - want) <= 4 * ulp * (np.abs(e1) + np.abs(p2))), np.max(np.abs(e2 - want))
    assert not tree_equal(state1.g_ema, state2.g_ema), "the EMA did not move"


def _count_convolutions(fn, *args) -> int:
    return str(jax.make_jaxpr(fn)(*args)).count("conv_general_dilated")


def test_approx_r1_reuses_the_real_half_of_the_d_pass():
    """In approx mode D's loss runs D twice: once over [real, fake] and once over the perturbed real clips.

    Catches: a third D pass that recomputes D(real) for the R1 difference."""
    config = micro_config("sfv.r1_mode=approx")
    models = SFVModels(config)
    train_step = make_train_step(config, models)
    b = 2
    latents = jax.ShapeDtypeStruct((b, config.data.num_frames, 8, 8, 4), jnp.float32)
    micro = dict(latents=latents, image_latent=jax.ShapeDtypeStruct((b, 8, 8, 4), jnp.float32),
                 clip=jax.ShapeDtypeStruct((b, 1, config.unet.cross_attention_dim), jnp.float32),
                 added_time_ids=jax.ShapeDtypeStruct((b, 3), jnp.float32))
    sigma = jax.ShapeDtypeStruct((b,), jnp.float32)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    d_loss = lambda h, bb, m, x, s, e, k: train_step.d_loss(h, bb, m, x, s, e, k)[0]
    loss_convs = _count_convolutions(d_loss, models.abstract_heads, models.abstract_backbone, micro, latents, sigma,
                                     latents, key)
    d_once = lambda h, bb, m, x, s: train_step.discriminate(bb, h, x, s, m)
    pass_convs = _count_convolutions(d_once, models.abstract_heads, models.abstract_backbone, micro, latents, sigma)
    assert pass_convs > 0 and loss_convs == 2 * pass_convs, (loss_convs, pass_convs)
