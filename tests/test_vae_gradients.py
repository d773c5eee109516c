"""The vae objective's gradients equal torch autograd's on diffusers' AutoencoderKLTemporalDecoder, per tensor,
through the real converter (forward parity alone cannot see a wrong backward pass)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder as TorchVAE
from flax import nnx
from safetensors.numpy import load_file

from sfv_jax.convert import vae_from_diffusers, vae_to_diffusers
from sfv_jax.convert.vae import WEIGHTS_NAME
from sfv_jax.train.vae_step import kl_to_standard_normal, reconstruction_loss
from tests.reference import channels_first as nchw
from tests.reference import randomize_, rel_err

# Two levels (one downsampler, one upsampler) and layers_per_block=2, so the decoder's mid-block attention runs.
TINY = dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, layers_per_block=2,
            latent_channels=4, in_channels=3, out_channels=3)
CLIPS, FRAMES, SIZE = 2, 3, 16
KL_WEIGHT = 0.3  # large, so that a KL gradient that went missing would show
BOUND = 1e-4  # float32 on both sides, jax at "highest" matmul precision; measured ~1e-5
ZERO = 1e-6  # gradients below ZERO x the largest tensor's norm count as zero (float32 rounding noise)


@pytest.fixture(scope="module")
def gradients(tmp_path_factory):
    """({diffusers name: jax gradient}, {diffusers name: torch gradient or None}, (jax, torch) d loss / d frames)."""
    torch.manual_seed(0)
    reference = TorchVAE(**TINY).float()
    randomize_(reference, 3)
    folder = str(tmp_path_factory.mktemp("vae"))
    reference.save_pretrained(folder, safe_serialization=True)
    vae = vae_from_diffusers(folder)
    rng = np.random.default_rng(0)
    frames = rng.uniform(-1, 1, (CLIPS * FRAMES, SIZE, SIZE, 3)).astype(np.float32)
    eps = rng.standard_normal((CLIPS * FRAMES, SIZE // 2, SIZE // 2, 4)).astype(np.float32)

    graphdef, params, rest = nnx.split(vae, nnx.Param, ...)

    def loss(params, x):
        model = nnx.merge(graphdef, params, rest)
        mean, logvar = model.latent_dist(x)
        decoded = model.decoder(mean + jnp.exp(0.5 * logvar) * eps, FRAMES)
        return reconstruction_loss(decoded, x, "l2") + KL_WEIGHT * kl_to_standard_normal(mean, logvar)

    with jax.default_matmul_precision("highest"):
        grads, d_frames = jax.grad(loss, argnums=(0, 1))(params, jnp.asarray(frames))
    out = str(tmp_path_factory.mktemp("grads") / "vae")
    vae_to_diffusers(nnx.merge(graphdef, grads, rest), out)  # the gradient tree, named and laid out as torch's
    jax_grads = load_file(f"{out}/{WEIGHTS_NAME}.safetensors")

    x = torch.from_numpy(nchw(frames)).requires_grad_(True)
    dist = reference.encode(x).latent_dist
    z = dist.mean + dist.std * torch.from_numpy(nchw(eps))
    decoded = reference.decode(z, num_frames=FRAMES).sample
    kl = 0.5 * (dist.mean ** 2 + dist.var - 1.0 - dist.logvar)
    (((decoded - x) ** 2).mean() + KL_WEIGHT * kl.mean()).backward()
    torch_grads = {name: None if p.grad is None else p.grad.numpy() for name, p in reference.named_parameters()}
    return jax_grads, torch_grads, (nchw(np.asarray(d_frames)), x.grad.numpy())


def test_every_parameter_gradient_matches_torch(gradients):
    """Catches a wrong backward pass anywhere in the encoder, quant_conv or temporal decoder (a custom gradient,
    a stop_gradient, a mis-wired residual or mix factor), and a converter that would map it to another tensor."""
    jax_grads, torch_grads, _ = gradients
    assert sorted(jax_grads) == sorted(torch_grads)
    # A bias followed by a GroupNorm of one channel per group (the 32-channel level) has a true gradient of 0: both
    # sides hold rounding noise there, so such tensors are held to their size, not to a relative error.
    scale = max(np.linalg.norm(g) for g in torch_grads.values() if g is not None)
    worst = 0.0
    for name, ref in torch_grads.items():
        if ref is None:  # a parameter diffusers never uses gets no gradient in JAX either
            assert not np.any(jax_grads[name]), name
            continue
        if np.linalg.norm(ref) < ZERO * scale:
            assert np.linalg.norm(jax_grads[name]) < ZERO * scale, name
            continue
        err = rel_err(jax_grads[name], ref)
        assert err <= BOUND, (name, err)
        worst = max(worst, err)
    print(f"VAE parameter gradients vs torch: worst rel L2 err {worst:.2e} (bound {BOUND:g})")


def test_frame_gradient_matches_torch(gradients):
    """d loss / d frames: the frames enter both the encoder and the reconstruction target."""
    _, _, (jax_frames, torch_frames) = gradients
    assert rel_err(jax_frames, torch_frames) <= BOUND
