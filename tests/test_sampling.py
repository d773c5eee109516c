"""End-to-end sampling: SFVPipeline against diffusers' StableVideoDiffusionPipeline, EDM maths, the sample CLI.

A tiny random diffusers pipeline (tiny UNet, 4-level VAE so latents are 1/8 of the image, tiny CLIP,
SVD-XT's scheduler and feature extractor configs) is saved and loaded with SFVPipeline.from_diffusers.
Both sample from the same unit `latents` with noise_aug_strength 0 and the guidance ramp on.
Bounds: latents rel L2 <= 1e-4; frames max abs <= 2/255 and mean abs <= 0.5/255.
"""

from __future__ import annotations

import json
import os

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder as TorchVAE
from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline
from transformers import CLIPImageProcessor
from transformers import CLIPVisionConfig as TorchCLIPConfig
from transformers import CLIPVisionModelWithProjection as TorchCLIP

from sfv_jax.diffusion import edm
from sfv_jax.pipeline import SFVPipeline
from tests.reference import DATA, randomize_, rel_err
from tests.unet_reference import tiny_torch_unet

# The CLIP projection feeds the UNet's cross-attention: projection_dim == cross_attention_dim (32).
TINY_CLIP = dict(hidden_size=64, intermediate_size=128, projection_dim=32, num_hidden_layers=2, num_attention_heads=4,
                 patch_size=14, image_size=224, hidden_act="gelu")
TINY_VAE = dict(block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                layers_per_block=1, latent_channels=4, in_channels=3, out_channels=3)
HEIGHT, WIDTH, FRAMES = 48, 64, 3
LATENT_BOUND = 1e-4
FRAME_MAX, FRAME_MEAN = 2 / 255, 0.5 / 255


def tiny_torch_pipeline(seed: int = 0) -> StableVideoDiffusionPipeline:
    unet = tiny_torch_unet(seed)
    torch.manual_seed(seed + 1)
    vae = TorchVAE(**TINY_VAE).eval()
    randomize_(vae, seed + 1)
    torch.manual_seed(seed + 2)
    clip = TorchCLIP(TorchCLIPConfig(**TINY_CLIP)).eval()
    randomize_(clip, seed + 2)
    scheduler = EulerDiscreteScheduler.from_pretrained(os.path.join(DATA, "scheduler"))
    feature_extractor = CLIPImageProcessor.from_pretrained(os.path.join(DATA, "feature_extractor"))
    return StableVideoDiffusionPipeline(vae=vae, image_encoder=clip, unet=unet, scheduler=scheduler,
                                        feature_extractor=feature_extractor)


def random_image(width: int, height: int, seed: int) -> PIL.Image.Image:
    """A smooth random RGB image (noise blurred by an upscale), so resizes stay meaningful."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(height // 8, 2), max(width // 8, 2), 3), dtype=np.uint8)
    noise = rng.integers(-20, 21, (height, width, 3))
    big = np.asarray(PIL.Image.fromarray(small).resize((width, height), PIL.Image.BICUBIC), np.int64)
    return PIL.Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    torch_pipe = tiny_torch_pipeline()
    folder = str(tmp_path_factory.mktemp("svd_tiny"))
    torch_pipe.save_pretrained(folder, safe_serialization=True)
    return torch_pipe, SFVPipeline.from_diffusers(folder), folder


# ---------------------------------------------------------------- EDM maths

def test_karras_sigmas_match_diffusers():
    scheduler = EulerDiscreteScheduler.from_pretrained(os.path.join(DATA, "scheduler"))
    schedule = edm.NoiseSchedule.from_scheduler_config(dict(scheduler.config))
    for steps in (1, 2, 4, 25):
        scheduler.set_timesteps(steps)
        np.testing.assert_array_equal(schedule.sigmas(steps), scheduler.sigmas.numpy())
        assert np.float32(schedule.init_noise_sigma) == np.float32(scheduler.init_noise_sigma)
        np.testing.assert_allclose(np.asarray(edm.c_noise(schedule.sigmas(steps)[:-1])),
                                   scheduler.timesteps.numpy(), rtol=1e-6)
    assert schedule.sigmas(1).tolist() == [700.0, 0.0]
    np.testing.assert_allclose(schedule.sigmas(4)[:3], [700.0, 70.54, 2.269], rtol=1e-3)


def test_preconditioning_matches_scheduler_step():
    sigma = np.float32(3.7)
    x, out = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    x0 = float(edm.c_skip(sigma)) * x + float(edm.c_out(sigma)) * out
    np.testing.assert_allclose(np.asarray(edm.denoise(out, x, sigma)), x0, rtol=1e-6, atol=1e-6)
    assert np.isclose(float(edm.c_in(sigma)), 1 / np.sqrt(sigma ** 2 + 1))


# ---------------------------------------------------------------- diffusers parity

def run_both(pipelines, image, steps, decode_chunk_size, seed=0, output_type="np"):
    torch_pipe, pipe, _ = pipelines
    h, w = HEIGHT // 8, WIDTH // 8
    unit = torch.randn(1, FRAMES, 4, h, w, generator=torch.Generator().manual_seed(seed + 10))
    kwargs = dict(num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_inference_steps=steps, noise_aug_strength=0.0,
                  min_guidance_scale=1.0, max_guidance_scale=3.0, decode_chunk_size=decode_chunk_size, fps=7,
                  motion_bucket_id=127)
    with torch.no_grad():
        ref = torch_pipe(image, latents=unit.clone(), output_type=output_type, **kwargs).frames
    # diffusers guides at every step count when max_guidance_scale > 1: ask for the same at one step.
    out = pipe(image, latents=unit[0].permute(0, 2, 3, 1).numpy(), output_type=output_type,
               do_classifier_free_guidance=True, **kwargs)
    ref = ref[0].permute(0, 2, 3, 1).numpy() if output_type == "latent" else np.asarray(ref[0])
    return out, ref


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_latents_match_diffusers(pipelines, steps):
    image = random_image(80, 56, seed=steps)  # not the output size: the resize is part of the test
    out, ref = run_both(pipelines, image, steps, None, output_type="latent")
    assert out.shape == ref.shape == (FRAMES, HEIGHT // 8, WIDTH // 8, 4)
    err = rel_err(out, ref)
    print(f"steps={steps}: latents rel err {err:.2e}")
    assert err < LATENT_BOUND


@pytest.mark.parametrize("steps,chunk", [(1, None), (2, 2), (4, None)])
def test_frames_match_diffusers(pipelines, steps, chunk):
    image = random_image(72, 40, seed=10 + steps)
    out, ref = run_both(pipelines, image, steps, chunk)
    assert out.shape == ref.shape == (FRAMES, HEIGHT, WIDTH, 3) and out.dtype == np.float32
    diff = np.abs(out - ref)
    print(f"steps={steps} chunk={chunk}: frames max abs {diff.max() * 255:.3f}/255, mean {diff.mean() * 255:.4f}/255")
    assert diff.max() <= FRAME_MAX and diff.mean() <= FRAME_MEAN
