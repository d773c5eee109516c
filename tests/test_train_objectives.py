"""The denoise and vae objectives' steps (sfv_jax.train.denoise_step, vae_step): their losses recomputed
independently, their noise distributions, decoder-only fine-tuning, and that they learn (held-out loss falls)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sfv_jax.diffusion import edm
from sfv_jax.train.objectives import make_objective
from tests.train_helpers import micro_toy_config, synthetic_batch, synthetic_video_batch


@pytest.fixture(scope="module")
def teacher():
    config = micro_toy_config("teacher", "optim.lr=1e-3", "optim.ema_decay=0.9")
    objective = make_objective(config)
    weights, _, _ = objective.initial_weights()
    return config, objective, jax.jit(objective.init_state)(weights)


@pytest.fixture(scope="module")
def vae():
    config = micro_toy_config("vae", "optim.lr=2e-3", "vae_loss.kl_weight=0.05", "vae_loss.recon_weight=2.0")
    objective = make_objective(config)
    weights, _, _ = objective.initial_weights()
    return config, objective, jax.jit(objective.init_state)(weights)


def test_denoise_loss_equals_a_numpy_recomputation_from_the_unet_output(teacher):
    """At fixed sigma per clip (one tiny, one huge), fixed noise, and clip 1's conditions dropped, the step's loss
    equals numpy's mean_b (sigma_b^2 + 1) / sigma_b^2 * mean (c_skip x_t + c_out F - x0)^2 with F the UNet's
    output on [c_in x_t, image latent] called here directly (relative 1e-6, float32).

    Catches: the EDM weight as 1 / sigma^2 or missing, c_skip and c_out swapped or c_out's sign lost, the model fed
    x_t instead of c_in x_t, condition dropout ignored or applied to the wrong clip or to added_time_ids."""
    config, objective, state = teacher
    batch = synthetic_batch(config, 0, 2, size=4)
    sigma = jnp.asarray([0.05, 40.0], jnp.float32)
    eps = jax.random.normal(jax.random.PRNGKey(3), batch["latents"].shape)
    keep = jnp.asarray([True, False])
    loss, _ = jax.jit(objective.step.loss_at)(state.params, batch, sigma, eps, keep)

    x0, s = np.asarray(batch["latents"], np.float64), np.asarray(sigma, np.float64)[:, None, None, None, None]
    x_t = x0 + s * np.asarray(eps, np.float64)
    image = np.asarray(batch["image_latent"]).copy()
    clip = np.asarray(batch["clip"]).copy()
    image[1], clip[1] = 0.0, 0.0  # clip 1: the unconditional input
    unet_in = np.concatenate([x_t / np.sqrt(s ** 2 + 1), np.broadcast_to(image[:, None], x0.shape)], axis=-1)
    unet = objective.models.generator(state.params)
    out = np.asarray(unet(jnp.asarray(unet_in, jnp.float32), jnp.asarray(0.25 * np.log(s[:, 0, 0, 0, 0]), jnp.float32),
                          jnp.asarray(clip), batch["added_time_ids"]), np.float64)
    x0_hat = x_t / (s ** 2 + 1) - s / np.sqrt(s ** 2 + 1) * out
    want = np.mean((s[:, 0, 0, 0, 0] ** 2 + 1) / s[:, 0, 0, 0, 0] ** 2 * ((x0_hat - x0) ** 2).reshape(2, -1).mean(1))
    assert abs(float(loss) - want) <= 1e-6 * want, (float(loss), want)


def test_denoise_noise_levels_and_condition_dropout_follow_the_config(teacher):
    """Over 200,000 draws: ln sigma has mean p_mean and std p_std (within 0.01), eps is unit normal, and the share
    of dropped conditions is cond_drop_prob (within 0.005). Catches sigma drawn as a lognormal of the wrong
    parameters (e.g. EDM's image defaults -1.2 / 1.2, or std and mean swapped), uniform sigma, or an inverted
    dropout mask (90% dropped)."""
    config, objective, _ = teacher
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    sigma, eps, keep = objective.step.draw_noise(keys, jnp.zeros((200_000, 1)))
    log_sigma = np.log(np.asarray(sigma, np.float64))
    assert abs(log_sigma.mean() - config.denoise.p_mean) < 0.01 and abs(log_sigma.std() - config.denoise.p_std) < 0.01
    assert abs(float(jnp.std(eps)) - 1.0) < 0.01
    assert abs((1.0 - float(jnp.mean(keep))) - config.denoise.cond_drop_prob) < 0.005


def test_denoise_batches_carry_a_drawn_augmentation_strength(teacher):
    """The denoise objective's encoder: each clip's added_time_ids[:, 2] is its own drawn strength s_b (lognormal
    of noise_aug_p_mean / p_std), and its image latent is the VAE mean of first frame + s_b * noise. Catches a
    fixed strength (the SF-V batch's 0.02) or a strength that the time ids and the image latent disagree on."""
    config, objective, state = teacher
    frames = np.asarray((synthetic_video_batch(config, 0, 4)["video"] + 1) * 127.5, np.uint8)
    batch = jax.jit(objective.encode)(state.encoders, frames, jax.random.PRNGKey(1))
    strength = np.asarray(batch["added_time_ids"][:, 2])
    assert len(set(strength.tolist())) == 4 and (strength > 0).all() and (strength < 1).all()
    np.testing.assert_array_equal(batch["added_time_ids"][:, :2], [[config.sfv.fps - 1, config.sfv.motion_bucket_id]] * 4)
    vae = objective.models.vae(state.encoders["vae"])
    first = frames[:, 0].astype(np.float32) / 127.5 - 1.0
    noise = jax.random.normal(jax.random.PRNGKey(1), first.shape)  # the encode fn's noise key is the call's key
    want = vae.encode(first + strength[:, None, None, None] * noise)
    # jitted vs op-by-op encoders sum in different orders: measured 1.8e-6 at most on latents of ~0.05; a strength
    # off by 0.01 moves them by ~1e-3
    np.testing.assert_allclose(batch["image_latent"], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("recon", ["l1", "l2"])
def test_vae_loss_parts_recombine_with_the_configured_weights(vae, recon):
    """With the posterior means decoded: recon equals numpy's mean |decode(mean) - x| (l1) or mean squared error
    (l2) of the model's own decode, KL numpy's mean 0.5 (mu^2 + var - 1 - logvar) of its latent_dist, and the loss
    is recon_weight * recon + kl_weight * kl for weights 2.0 and 0.05. Catches a swapped or missing weight, the KL
    summed instead of averaged, or one reconstruction loss where the other is configured."""
    config, _, state = vae
    config = micro_toy_config("vae", "vae_loss.kl_weight=0.05", "vae_loss.recon_weight=2.0", f"vae_loss.recon={recon}")
    objective = make_objective(config)
    batch = synthetic_video_batch(config, 0, 2)
    parts = jax.jit(lambda p, v: objective.step.loss_parts(p, v, None))(state.params, batch["video"])
    loss = objective.step.eval_loss(state.params, batch)
    model = objective.models.vae(state.params)
    images = np.asarray(batch["video"]).reshape(-1, *batch["video"].shape[2:])
    mean, logvar = (np.asarray(a, np.float64) for a in model.latent_dist(jnp.asarray(images)))
    decoded = np.asarray(model.decode(jnp.asarray(mean, jnp.float32), config.data.num_frames), np.float64)
    error = decoded - images
    recon_value = np.mean(np.abs(error)) if recon == "l1" else np.mean(np.square(error))
    kl = np.mean(0.5 * (mean ** 2 + np.exp(logvar) - 1 - logvar))
    np.testing.assert_allclose([float(parts["recon"]), float(parts["kl"])], [recon_value, kl], rtol=1e-5)
    np.testing.assert_allclose(float(loss), 2.0 * recon_value + 0.05 * kl, rtol=1e-5)


def test_vae_decoder_only_fine_tuning_leaves_the_encoder_untouched():
    """decoder_only with AdamW weight decay: after two steps the encoder and quant_conv are bit-identical and
    every decoder leaf moved. Catches a frozen part that still gets gradients or weight decay (an optax mask
    that passes raw gradients through), or a freeze that also stops the decoder."""
    config = micro_toy_config("vae", "vae_loss.decoder_only=True", "optim.weight_decay=0.1", "optim.lr=1e-3")
    objective = make_objective(config)
    weights, _, _ = objective.initial_weights()
    init = jax.jit(objective.init_state)(weights)
    host = jax.tree.map(np.asarray, init.params)
    step = jax.jit(objective.step)
    state = init
    for first in (0, 4):
        state, metrics = step(state, synthetic_video_batch(config, first, 4))
    assert metrics["nonfinite"] == 0
    for key in ("encoder", "quant_conv"):
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(host[key]), jax.tree.leaves(state.params[key])))
    # With layers_per_block=1 the decoder's mid block never calls its attention (diffusers zips its one attention
    # with resnets[1:]), so those leaves have no gradient; every other decoder leaf must move.
    leaves = jax.tree_util.tree_flatten_with_path(host["decoder"])[0]
    moved = {jax.tree_util.keystr(path): not np.array_equal(a, b)
             for (path, a), b in zip(leaves, jax.tree.leaves(state.params["decoder"]))}
    still = sorted(k for k, m in moved.items() if not m and "['mid_block']['attentions']" not in k)
    assert len(moved) > 50 and not still, still


def _train(objective, state, batches, steps: int):
    step = jax.jit(objective.step)
    for i in range(steps):
        state, metrics = step(state, batches[i % len(batches)])
        assert metrics["nonfinite"] == 0
    return state


def test_denoise_objective_lowers_its_heldout_loss(teacher, measured):
    """40 steps on 8 training clips (the built-in moving shapes): the held-out eval_loss (4 other clips, fixed
    noise, config.denoise.eval_sigmas) falls below 0.8x its start. Catches a step that does not descend (a sign
    error, the update applied to a copy, gradients that never reach the UNet)."""
    config, objective, state = teacher
    train = [synthetic_batch(config, first, 4, size=4) for first in (0, 4)]
    heldout = synthetic_batch(config, 100, 4, size=4)
    before = float(objective.eval_loss(state, heldout))
    after = float(objective.eval_loss(_train(objective, state, train, 40), heldout))
    measured(f"denoise objective (micro): held-out eval_loss {before:.4f} -> {after:.4f} in 40 steps (goal < 0.8x)")
    assert after < 0.8 * before


def test_vae_objective_lowers_its_heldout_loss(vae, measured):
    """40 steps on 8 training clips: the held-out loss (4 other clips, posterior means) falls below 0.7x its start.
    Catches a step that does not descend, or a KL that swamps reconstruction."""
    config, objective, state = vae
    train = [synthetic_video_batch(config, first, 4) for first in (0, 4)]
    heldout = synthetic_video_batch(config, 100, 4)
    before = float(objective.eval_loss(state, heldout))
    after = float(objective.eval_loss(_train(objective, state, train, 40), heldout))
    measured(f"vae objective (micro): held-out eval_loss {before:.4f} -> {after:.4f} in 40 steps (goal < 0.7x)")
    assert after < 0.7 * before


def test_vae_crops_are_windows_of_their_own_clip_shared_by_its_frames():
    """vae_loss.crop: each clip of a (6, 3, 24, 32, 3) batch becomes a 16 x 16 window of that clip at one offset
    for all its frames; the offsets differ between clips and keys and reach both edges over many draws; a crop
    that is not a multiple of the VAE's downsampling is refused. Catches windows drawn per frame (the temporal
    decoder would see shapes jump), one offset for the whole batch, an off-by-one that never reaches the last
    row or column, or a crop silently rounded."""
    from sfv_jax.train.vae_step import random_crops

    video = jax.random.normal(jax.random.key(0), (6, 3, 24, 32, 3))
    offsets = []
    for seed in range(40):
        crops = np.asarray(random_crops(video, 16, jax.random.key(seed)))
        assert crops.shape == (6, 3, 16, 16, 3)
        for clip, crop in zip(np.asarray(video), crops):
            found = [(t, l) for t in range(24 - 15) for l in range(32 - 15)
                     if np.array_equal(clip[:, t:t + 16, l:l + 16], crop)]
            assert len(found) == 1, found
            offsets.append(found[0])
    tops, lefts = zip(*offsets)
    assert len(set(offsets[:6])) > 1 and {0, 8} <= set(tops) and {0, 16} <= set(lefts)
    assert random_crops(video, 0, jax.random.key(0)) is video
    with pytest.raises(ValueError, match="multiple of 2"):
        make_objective(micro_toy_config("vae", "vae_loss.crop=15"))
