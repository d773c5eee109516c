"""SF-V's discriminator (docs/method.md section 3): its frozen backbone against diffusers' UNet encoder, and
what its 8 projection heads condition on and along which axis they look.

The tiny config (4 down blocks, every block type) with random weights, float32, CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from sfv_jax.config import load_config
from sfv_jax.convert import unet_from_diffusers
from sfv_jax.train.state import SFVModels, init_state
from tests.reference import channels_last, rel_err
from tests.train_helpers import make_batch
from tests.unet_reference import save_unet, tiny_torch_unet, unet_inputs

BACKBONE_BOUND = 1e-4
NUM_FRAMES = 5


@pytest.fixture(scope="module")
def tiny():
    """(config, models, state at init, a batch of 2 clips of 5 frames at 9x13) for the tiny config."""
    config = load_config("configs/tiny_sfv.py")
    models = SFVModels(config)
    state = init_state(models, models.random_generator_params(3), models.random_head_params(4), 0)
    batch = make_batch(config, batch=2, height=9, width=13, seed=5)
    batch["latents"] = jnp.asarray(np.random.default_rng(6).standard_normal((2, NUM_FRAMES, 9, 13, 4)), jnp.float32)
    return config, models, state, batch


def test_discriminator_has_encoder_backbone_and_eight_heads():
    """The backbone holds exactly the UNet's encoder half (same names and shapes as G's), and the heads give one
    (B, T, h_i, w_i) logit map per down block and kind. Catches: the mid block or up path in D, a head missing."""
    config = load_config("configs/tiny_sfv.py")
    models = SFVModels(config)
    assert set(models.abstract_backbone["backbone"]) == {"conv_in", "time_embedding", "add_embedding", "down_blocks"}
    assert len(models.abstract_heads["spatial_heads"]) == 4 and len(models.abstract_heads["temporal_heads"]) == 4
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


@pytest.mark.parametrize("family", ["spatial", "temporal"])
def test_one_head_family_alone_is_the_full_discriminators_heads_of_that_family(tiny, family):
    """disc.heads='spatial' or 'temporal' (the paper's head ablation): the discriminator holds the 4 heads of that
    family and none of the other, their logits equal the full discriminator's heads of that family with the same
    weights, and the hinge and generator losses average those 4 heads only; any other value is refused naming
    the choices. Catches: an ablation that keeps the other family (or zeroes its logits, which would still count
    in the mean over heads), heads of the kept family built at other levels or with other weights."""
    from sfv_jax.train import losses

    config, models, state, batch = tiny
    ablated = SFVModels(load_config("configs/tiny_sfv.py", [f"disc.heads={family}"]))
    kept, dropped = f"{family}_heads", ("temporal_heads" if family == "spatial" else "spatial_heads")
    assert len(ablated.abstract_heads[kept]) == 4 and dropped not in ablated.abstract_heads
    heads = {kept: state.d_heads[kept]}
    run = lambda m, h: m.discriminator(state.backbone, h)(batch["latents"], jnp.asarray([0.4, 2.0]),
                                                          batch["image_latent"], batch["clip"], batch["added_time_ids"])
    full, alone = run(models, state.d_heads), run(ablated, heads)
    assert alone[dropped.split("_")[0]] == [] and len(alone[family]) == 4
    for a, b in zip(full[family], alone[family]):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6 * float(jnp.max(jnp.abs(a))))
    fake = jax.tree.map(lambda x: 0.5 - x, alone)
    relu = lambda x: np.maximum(np.asarray(x, np.float64), 0.0)
    hinge = np.mean([relu(1 - r).mean() + relu(1 + f).mean() for r, f in zip(alone[family], fake[family])])
    np.testing.assert_allclose(losses.hinge_d_loss(alone, fake), hinge, rtol=1e-5)
    np.testing.assert_allclose(losses.generator_adv_loss(fake), np.mean([-np.mean(f) for f in fake[family]]),
                               rtol=1e-5, atol=1e-7)
    assert set(losses.head_means(alone)) == {family}
    with pytest.raises(ValueError, match="disc.heads='both'.*'spatial,temporal'"):
        SFVModels(load_config("configs/tiny_sfv.py", ["disc.heads=both"]))


def test_backbone_at_init_equals_diffusers_unet_encoder(tmp_path, measured):
    """The discriminator built by init_state from converted SVD weights: its 4 feature maps equal the outputs of
    diffusers' UNet down blocks (forward hooks) on the same inputs, rel L2 <= 1e-4 each (9x13 latent, 3 frames).

    Catches: the backbone copied from the wrong parameters (e.g. the heads' or a fresh init), features taken
    before a block's downsampler, a different embedding of the timestep or added time ids than G's."""
    torch_unet = tiny_torch_unet(seed=7)
    captured = []
    for block in torch_unet.down_blocks:
        block.register_forward_hook(lambda module, args, out: captured.append(out[0] if isinstance(out, tuple)
                                                                              else out))
    sample, timestep, context, time_ids = unet_inputs(2, 3, 9, 13, seed=8)
    with torch.no_grad():
        torch_unet(sample, timestep, context, added_time_ids=time_ids)
    unet = unet_from_diffusers(save_unet(torch_unet, str(tmp_path / "unet")))
    models = SFVModels(load_config("configs/tiny_sfv.py"))
    g_params = nnx.to_pure_dict(nnx.state(unet, nnx.Param))
    state = init_state(models, g_params, models.random_head_params(0), 0)
    d = models.discriminator(state.backbone, state.d_heads)
    feats = nnx.jit(lambda d, *a: d.backbone.down_features(*a))(
        d, jnp.asarray(np.moveaxis(sample.numpy(), 2, -1)), jnp.asarray(timestep.numpy()),
        jnp.asarray(context.numpy()), jnp.asarray(time_ids.numpy()))
    assert len(feats) == len(captured) == 4
    for i, (ours, ref) in enumerate(zip(feats, captured)):
        err = rel_err(ours, channels_last(ref))
        measured(f"down block {i} {tuple(ours.shape)}: rel L2 err {err:.2e} (bound {BACKBONE_BOUND:.0e})")
        assert ours.shape == channels_last(ref).shape and err <= BACKBONE_BOUND


@pytest.fixture(scope="module")
def heads(tiny):
    """Jitted head_logits(d_heads, feats, c_noise, clip) and the tiny D's feature maps for the batch."""
    config, models, state, batch = tiny
    sigma = jnp.asarray([0.4, 2.0], jnp.float32)
    feats = jax.jit(lambda bb, h: models.discriminator(bb, h).backbone_features(
        batch["latents"], sigma, batch["image_latent"], batch["clip"], batch["added_time_ids"]))(
        state.backbone, state.d_heads)
    logits = jax.jit(lambda h, f, c, clip: models.discriminator(state.backbone, h).head_logits(f, c, clip,
                                                                                              NUM_FRAMES))
    return logits, feats, 0.25 * jnp.log(sigma), batch["clip"], state.d_heads


def _changed(a: dict, b: dict) -> list[float]:
    """Per head (spatial then temporal): max |a - b| relative to max |a|."""
    return [float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(x))) for kind in ("spatial", "temporal")
            for x, y in zip(a[kind], b[kind])]


def _without_frame_index(d_heads):
    zero = lambda head: {**head, "embed": {**head["embed"], "frame_proj": jax.tree.map(jnp.zeros_like,
                                                                                       head["embed"]["frame_proj"])}}
    return {kind: {i: zero(h) for i, h in d_heads[kind].items()} if isinstance(d_heads[kind], dict)
            else [zero(h) for h in d_heads[kind]] for kind in d_heads}


def test_each_condition_reaches_every_heads_logits(heads, tiny):
    """With the backbone features held fixed, changing only the CLIP embedding, only c_noise(sigma'), or removing
    only the frame-index embedding changes the logits of all 8 heads; through the whole D, changing the CLIP
    embedding or sigma' changes them too.

    Catches: dropping any of the three projection conditions (e.g. the frame index), a condition fed to the
    spatial heads but not the temporal ones."""
    logits, feats, c_noise, clip, d_heads = heads
    base = logits(d_heads, feats, c_noise, clip)
    variants = {
        "clip": logits(d_heads, feats, c_noise, clip + 0.5 * jax.random.normal(jax.random.PRNGKey(1), clip.shape)),
        "c_noise": logits(d_heads, feats, c_noise + 0.7, clip),
        "frame index": logits(_without_frame_index(d_heads), feats, c_noise, clip)}
    for name, out in variants.items():
        change = _changed(base, out)
        print(f"{name}: per-head relative change {np.round(change, 3).tolist()}")
        assert min(change) > 1e-3, (name, change)
    config, models, state, batch = tiny
    d = jax.jit(lambda h, s, c: models.discriminator(state.backbone, h)(
        batch["latents"], s, batch["image_latent"], c, batch["added_time_ids"]))
    whole = d(d_heads, jnp.asarray([0.4, 2.0]), batch["clip"])
    assert min(_changed(whole, d(d_heads, jnp.asarray([0.9, 5.0]), batch["clip"]))) > 1e-3
    assert min(_changed(whole, d(d_heads, jnp.asarray([0.4, 2.0]), -batch["clip"]))) > 1e-3


def test_spatial_heads_look_per_frame_and_temporal_heads_along_time(heads):
    """Permuting the frames of the feature maps (frame-index condition removed) permutes every spatial head's
    per-frame logits exactly and changes the temporal heads' logits beyond a permutation; with the frame index,
    the spatial logits no longer just permute.

    Perturbing one pixel's features in every frame moves that pixel's temporal logits only; perturbing one frame
    moves that frame's spatial logits only.

    Catches: temporal heads that act per frame (a kernel of 1 along time) or on series reshaped from the wrong
    axes, spatial heads that mix frames, the frame-index embedding attached to the wrong axis."""
    logits, feats, c_noise, clip, d_heads = heads
    perm = np.array([3, 0, 4, 1, 2])
    permute = lambda f: f.reshape(-1, NUM_FRAMES, *f.shape[1:])[:, perm].reshape(f.shape)
    shuffled = [permute(f) for f in feats]
    plain = _without_frame_index(d_heads)
    base, moved = logits(plain, feats, c_noise, clip), logits(plain, shuffled, c_noise, clip)
    for a, b in zip(base["spatial"], moved["spatial"]):
        np.testing.assert_allclose(b, a[:, perm], rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(a))))
    temporal_change = [float(jnp.max(jnp.abs(b - a[:, perm])) / jnp.max(jnp.abs(a)))
                       for a, b in zip(base["temporal"], moved["temporal"])]
    print(f"temporal heads, permuted frames vs permuted logits: relative change {np.round(temporal_change, 3)}")
    assert min(temporal_change) > 1e-2, temporal_change
    with_index = logits(d_heads, feats, c_noise, clip), logits(d_heads, shuffled, c_noise, clip)
    spatial_change = [float(jnp.max(jnp.abs(b - a[:, perm])) / jnp.max(jnp.abs(a)))
                      for a, b in zip(with_index[0]["spatial"], with_index[1]["spatial"])]
    assert min(spatial_change) > 1e-3, spatial_change
    # Locality: a temporal head's sample is one pixel's time series, a spatial head's one frame. Perturbing the
    # first level's features at one pixel (every frame) moves that pixel's temporal logits only; perturbing one
    # frame (every pixel) moves that frame's spatial logits only.
    base = logits(d_heads, feats, c_noise, clip)
    level = feats[0].reshape(-1, NUM_FRAMES, *feats[0].shape[1:])
    pixel = logits(d_heads, [level.at[:, :, 1, 2].add(1.0).reshape(feats[0].shape)] + feats[1:], c_noise, clip)
    moved = np.abs(np.asarray(pixel["temporal"][0] - base["temporal"][0])) > 1e-6 * float(jnp.max(jnp.abs(
        base["temporal"][0])))
    expected = np.zeros_like(moved)
    expected[:, :, 1, 2] = True
    np.testing.assert_array_equal(moved, expected)
    frame = logits(d_heads, [level.at[:, 2].add(1.0).reshape(feats[0].shape)] + feats[1:], c_noise, clip)
    moved = np.abs(np.asarray(frame["spatial"][0] - base["spatial"][0])) > 1e-6 * float(jnp.max(jnp.abs(
        base["spatial"][0])))
    assert moved[:, 2].all() and not np.delete(moved, 2, axis=1).any()
