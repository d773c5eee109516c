"""The identity start for training from scratch (sfv_jax.models.scratch_init): what it makes of the SVD models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sfv_jax.models.conv_paths import conv_channels_last
from sfv_jax.models.nnx_state import flatten
from sfv_jax.models.resnet import ResnetBlock2D, TemporalResnetBlock
from sfv_jax.models.scratch_init import POOLING_LOGVAR, identity_kernel, identity_start, pooling_encoder, scratch_params
from sfv_jax.train.objectives import make_objective
from tests.train_helpers import micro_toy_config

FRAMES = 4


@pytest.fixture(scope="module")
def vae_models():
    """The micro toy VAE's graph and its torch-default random params."""
    objective = make_objective(micro_toy_config("vae", f"data.num_frames={FRAMES}"))
    return objective.models, objective.models.random_params(3)


@pytest.mark.parametrize("shape", [(3, 1, 1, 3, 3), (1, 1, 8, 8), (3, 3, 5, 5)])
def test_identity_kernel_copies_its_input(shape):
    """Catches a centre tap placed off-centre (a shift) or a transposed unit matrix of the wrong size."""
    spatial = len(shape) - 2
    x = jax.random.normal(jax.random.key(0), (2, *([5] * spatial), shape[-1]))
    padding = tuple((k // 2, k // 2) for k in shape[:spatial])
    y = conv_channels_last(x, jnp.asarray(identity_kernel(shape)), (1,) * spatial, padding, method="xla")
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))


def test_identity_kernel_rejects_a_conv_that_cannot_copy():
    with pytest.raises(ValueError, match="identity conv"):
        identity_kernel((3, 3, 4, 8))


def test_identity_started_vae_decodes_each_frame_alone(vae_models):
    """Changing frame 0's latent leaves the other frames of the clip untouched at the identity start, and not at
    torch's init. Catches a temporal mixer left random: the output Conv3d (time_conv_out) or a temporal resnet
    branch whose last conv was not zeroed."""
    models, params = vae_models
    z = jax.random.normal(jax.random.key(1), (2 * FRAMES, 4, 4, 4))
    changed = z.at[0].add(1.0)  # frame 0 of clip 0

    def frames_moved(p):
        decoder = models.vae(p).decoder
        return np.abs(np.asarray(decoder(changed, FRAMES)) - np.asarray(decoder(z, FRAMES))).max(axis=(1, 2, 3))

    moved = frames_moved(identity_start(params))
    assert moved[0] > 1e-3
    assert np.all(moved[1:] == 0.0), moved
    assert np.all(frames_moved(params)[1:FRAMES] > 1e-4)  # torch's init mixes the frames: the check can fail


def test_identity_started_resnets_return_their_input_and_quant_conv_passes_the_moments(vae_models):
    """Every resnet without a channel change is the identity, and latent_dist's moments are the encoder's output.
    Catches a residual branch left random (a key suffix that misses a resnet) and a random quant_conv."""
    models, params = vae_models
    vae = models.vae(identity_start(params))
    checked = 0
    for _, module in nnx.iter_graph(vae):
        if isinstance(module, (ResnetBlock2D, TemporalResnetBlock)) and module.conv_shortcut is None:
            channels = module.conv1.in_features
            shape = (2, 4, 4, channels) if isinstance(module, ResnetBlock2D) else (2, 3, 4, 4, channels)
            x = jax.random.normal(jax.random.key(checked), shape)
            np.testing.assert_array_equal(np.asarray(module(x, None)), np.asarray(x))
            checked += 1
    assert checked >= 4
    images = jax.random.uniform(jax.random.key(7), (2, 32, 32, 3), minval=-1, maxval=1)
    mean, logvar = vae.latent_dist(images)
    moments = vae.encoder(images)
    np.testing.assert_array_equal(np.asarray(mean), np.asarray(moments[..., :4]))
    np.testing.assert_array_equal(np.asarray(logvar), np.clip(np.asarray(moments[..., 4:]), -30, 20))


@pytest.mark.parametrize("variant", ["vae", "teacher"])
def test_scratch_init_reaches_the_trained_component_only(variant):
    """config.scratch_init=identity zeroes every resnet branch's last conv of what the objective trains from random
    (the VAE; the teacher's UNet) and leaves the frozen random encoders as drawn; "torch" keeps torch's init.
    Catches the setting being ignored, or applied to the frozen CLIP/VAE of the denoise objective."""
    start = {kind: make_objective(micro_toy_config(variant, f"scratch_init={kind}")).initial_weights()[0]
             for kind in ("torch", "identity")}
    trained = "vae" if variant == "vae" else "unet"
    identity, torch_init = flatten(start["identity"][trained]), flatten(start["torch"][trained])
    branch_outs = [k for k in identity if k.endswith(".conv2.kernel")]
    assert branch_outs and all(not np.any(np.asarray(identity[k])) for k in branch_outs)
    assert all(np.any(np.asarray(torch_init[k])) for k in branch_outs)
    for name in set(start["torch"]) - {trained}:  # the frozen encoders of the denoise objective
        for key, value in flatten(start["torch"][name]).items():
            np.testing.assert_array_equal(np.asarray(flatten(start["identity"][name])[key]), np.asarray(value))


def test_unknown_scratch_init_is_named():
    with pytest.raises(ValueError, match="scratch_init='xavier'"):
        scratch_params({}, "xavier")


def _vae_with_widths(widths: tuple[int, ...]):
    """The micro toy VAE's graph at block_out_channels=widths (one DownEncoderBlock2D per level) and its random params."""
    blocks = ", ".join(["'DownEncoderBlock2D'"] * len(widths))
    objective = make_objective(micro_toy_config("vae", f"vae.block_out_channels={widths}",
                                                f"vae.down_block_types=({blocks},)"))
    return objective.models, objective.models.random_params(5)


@pytest.mark.parametrize("widths", [(64, 128), (64, 64, 128)])
def test_pooling_encoder_means_are_patch_means(widths):
    """At the pooling start the posterior means are the frames' f x f patch means (f = 2 per downsampler), colour c
    in latent channel c, the 4th channel zero, log-variances POOLING_LOGVAR. Bound 2.5e-3: the encoder's last
    GroupNorm divides by sqrt(K^2 + mean(x^2)) where the start assumes K, a relative error <= 1/(2 K^2) = 0.2% for
    |x| <= 1. Catches a downsampling window off by one pixel (the VAE pads right/bottom only), a lost SiLU
    correction, a wrong carrier scale and colours swapped between channels."""
    models, params = _vae_with_widths(widths)
    factor = 2 ** (len(widths) - 1)
    images = jax.random.uniform(jax.random.key(2), (3, 16, 16, 3), minval=-1, maxval=1)
    mean, logvar = models.vae(scratch_params(params, "pooling")).latent_dist(images)
    patch_means = np.asarray(images).reshape(3, 16 // factor, factor, 16 // factor, factor, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(np.asarray(mean[..., :3]), patch_means, atol=2.5e-3, rtol=0)
    assert np.all(np.asarray(mean[..., 3]) == 0.0)
    np.testing.assert_array_equal(np.asarray(logvar), POOLING_LOGVAR)


def test_pooling_start_leaves_the_decoder_at_the_identity_start():
    """Catches the pooling start reaching into the decoder (its keys also hold conv_in, conv_out, attentions)."""
    models, params = _vae_with_widths((64, 128))
    pooled, identity = flatten(scratch_params(params, "pooling")), flatten(identity_start(params))
    decoder_keys = [k for k in pooled if k.startswith("decoder.")]
    assert decoder_keys
    for key in decoder_keys:
        np.testing.assert_array_equal(np.asarray(pooled[key]), np.asarray(identity[key]))


def test_pooling_start_names_an_encoder_too_narrow_for_it(vae_models):
    """The micro toy VAE ends at 64 channels, 2 per GroupNorm group: the (x, -x, K, -K) lanes cannot fit."""
    _, params = vae_models
    with pytest.raises(ValueError, match=">= 4 channels per GroupNorm group"):
        pooling_encoder(identity_start(params))
