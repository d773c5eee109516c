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
    unet = tiny_torch_unet(seed, layers_per_block=1, num_frames=FRAMES)
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

def run_both(pipelines, image, steps, decode_chunk_size, seed=0):
    """One diffusers run (final latents captured by the step callback, frames as "np") and the same in sfv-jax."""
    torch_pipe, pipe, _ = pipelines
    h, w = HEIGHT // 8, WIDTH // 8
    unit = torch.randn(1, FRAMES, 4, h, w, generator=torch.Generator().manual_seed(seed + 10))
    kwargs = dict(num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_inference_steps=steps, noise_aug_strength=0.0,
                  min_guidance_scale=1.0, max_guidance_scale=3.0, decode_chunk_size=decode_chunk_size, fps=7,
                  motion_bucket_id=127)
    captured = {}

    def keep_latents(_pipe, _i, _t, tensors):
        captured["latents"] = tensors["latents"]
        return {}

    with torch.no_grad():
        ref_frames = torch_pipe(image, latents=unit.clone(), output_type="np", callback_on_step_end=keep_latents,
                                **kwargs).frames[0]
    ref_latents = captured["latents"][0].permute(0, 2, 3, 1).numpy()
    # diffusers guides at every step count when max_guidance_scale > 1: ask for the same at one step.
    unit_jax = unit[0].permute(0, 2, 3, 1).numpy()
    latents = pipe(image, latents=unit_jax, output_type="latent", do_classifier_free_guidance=True, **kwargs)
    frames = pipe(image, latents=unit_jax, output_type="np", do_classifier_free_guidance=True, **kwargs)
    return latents, ref_latents, frames, np.asarray(ref_frames)


@pytest.mark.parametrize("steps,chunk", [(1, None), (2, 2), (4, None)])
def test_matches_diffusers(pipelines, steps, chunk):
    image = random_image(72, 40, seed=steps)  # not the output size: the resize is part of the test
    latents, ref_latents, frames, ref_frames = run_both(pipelines, image, steps, chunk)
    assert latents.shape == ref_latents.shape == (FRAMES, HEIGHT // 8, WIDTH // 8, 4)
    err = rel_err(latents, ref_latents)
    assert frames.shape == ref_frames.shape == (FRAMES, HEIGHT, WIDTH, 3) and frames.dtype == np.float32
    diff = np.abs(frames - ref_frames)
    print(f"steps={steps} chunk={chunk}: latents rel err {err:.2e}; "
          f"frames max abs {diff.max() * 255:.4f}/255, mean {diff.mean() * 255:.5f}/255")
    assert err < LATENT_BOUND
    assert diff.max() <= FRAME_MAX and diff.mean() <= FRAME_MEAN


def test_one_step_is_sfv_without_guidance(pipelines):
    """Default one-step call: no CFG (guidance ramp ignored), equal to the unguided Euler step = D(x; sigma_max)."""
    _, pipe, _ = pipelines
    image = random_image(64, 48, seed=3)
    kwargs = dict(num_frames=FRAMES, height=HEIGHT, width=WIDTH, output_type="latent", seed=5)
    default = pipe(image, **kwargs)
    unguided = pipe(image, do_classifier_free_guidance=False, **kwargs)
    guided = pipe(image, do_classifier_free_guidance=True, **kwargs)
    np.testing.assert_array_equal(default, unguided)
    assert rel_err(guided, default) > 1e-3


def test_same_seed_same_video(pipelines):
    _, pipe, _ = pipelines
    image = random_image(64, 48, seed=4)
    kwargs = dict(num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_inference_steps=2, noise_aug_strength=0.3)
    a, b = pipe(image, seed=7, **kwargs), pipe(image, seed=7, **kwargs)
    c = pipe(image, seed=8, **kwargs)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    assert a.min() >= 0 and a.max() <= 1
    u8 = pipe(image, seed=7, output_type="uint8", **kwargs)
    assert u8.dtype == np.uint8 and u8.shape == a.shape
    batch = pipe([image, image], seed=7, output_type="latent", **kwargs)
    assert batch.shape == (2, FRAMES, HEIGHT // 8, WIDTH // 8, 4)


def test_pipelines_own_their_progress_hooks_and_a_bounded_program_cache(pipelines, monkeypatch):
    """Catches: a module-level progress hook list (a second pipeline's sampler steps ticking the first one's
    progress bar) and a module-level or unbounded compiled-program cache."""
    import sfv_jax.pipeline as pipeline_module
    _, pipe_a, _ = pipelines
    pipe_b = SFVPipeline(pipe_a.unet, pipe_a.vae, pipe_a.image_encoder, pipe_a.scheduler_config)
    image = random_image(64, 48, seed=4)
    kwargs = dict(num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_inference_steps=2, output_type="latent")
    ticks_a, ticks_b = [], []
    pipe_a._progress.hooks.append(ticks_a.append)
    try:
        pipe_b(image, progress=ticks_b.append, **kwargs)
        assert ticks_a == [] and sorted(ticks_b) == [0, 1]
        pipe_a(image, **kwargs)
        assert sorted(ticks_a) == [0, 1] and sorted(ticks_b) == [0, 1]
    finally:
        pipe_a._progress.hooks.remove(ticks_a.append)
    monkeypatch.setattr(pipeline_module, "MAX_COMPILED", 2)
    pipe_b(image, **{**kwargs, "output_type": "np"})  # 4 stages, capped at the 2 most recent
    assert len(pipe_b._compiled) == 2 and set(pipe_b.last_compiled) == set(pipeline_module.STAGES)
    pipe_b(image, **{**kwargs, "output_type": "np"})
    assert pipe_b.last_timings["image_encoder"]["compile_s"] > 0  # evicted, so compiled again


def test_sfv_refinement_runs_without_guidance_by_default(pipelines):
    """SF-V's 2-step refinement with the default arguments equals the same call with guidance off, and differs from
    it with guidance forced on. Catches: diffusers' multi-step CFG rule applied to SF-V's sampler (it is trained
    without guidance; max_guidance_scale defaults to 3)."""
    _, pipe, _ = pipelines
    image = random_image(64, 48, seed=6)
    kwargs = dict(num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_inference_steps=2, output_type="latent",
                  sampler="sfv")
    default = pipe(image, **kwargs)
    np.testing.assert_array_equal(default, pipe(image, do_classifier_free_guidance=False, **kwargs))
    assert rel_err(default, pipe(image, do_classifier_free_guidance=True, **kwargs)) > 1e-3


@pytest.mark.slow  # one more UNet compile per step count
@pytest.mark.parametrize("steps", [1, 3])
def test_sfv_sampler(pipelines, steps):
    """SF-V's sampler: one level equals the one-step Euler call (up to float32 rounding of x + (x0 - x) at
    sigma 700: ~700 * 6e-8 per element); three levels re-noise and refine."""
    _, pipe, _ = pipelines
    image = random_image(64, 48, seed=5)
    kwargs = dict(num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_inference_steps=steps, output_type="latent")
    out = pipe(image, sampler="sfv", **kwargs)
    if steps == 1:
        assert rel_err(out, pipe(image, **kwargs)) < 1e-3
    assert out.shape == (FRAMES, HEIGHT // 8, WIDTH // 8, 4) and np.isfinite(out).all()


# ---------------------------------------------------------------- the sample CLI

@pytest.fixture(scope="module")
def checkpoint(pipelines, tmp_path_factory):
    from sfv_jax.cli import main
    out = str(tmp_path_factory.mktemp("ckpt") / "tiny")
    assert main(["convert", "--diffusers", pipelines[2], "--out", out]) == 0
    return out


@pytest.fixture
def image_file(tmp_path):
    path = str(tmp_path / "in.png")
    random_image(64, 48, seed=6).save(path)
    return path


@pytest.mark.parametrize("ext", ["gif", "mp4"])
def test_cli_sample_writes_video(checkpoint, image_file, tmp_path, capsys, ext):
    from sfv_jax.cli import main
    out = str(tmp_path / f"clip.{ext}")
    argv = ["sample", "--checkpoint", checkpoint, "--image", image_file, "--out", out, "--num-frames", str(FRAMES),
            "--height", str(HEIGHT), "--width", str(WIDTH), "--decode-chunk-size", "2"]
    assert main(argv + (["--steps", "2"] if ext == "mp4" else [])) == 0
    printed = capsys.readouterr().out
    assert "UNet x" in printed and "compile" in printed and "VAE decode" in printed
    assert os.path.getsize(out) > 0 and os.path.isfile(str(tmp_path / "clip.contact.png"))
    if ext == "gif":
        with PIL.Image.open(out) as gif:
            assert gif.n_frames == FRAMES and gif.size == (WIDTH, HEIGHT)
    assert sorted(os.listdir(tmp_path)) == sorted([f"clip.{ext}", "clip.contact.png", "in.png"])


def test_cli_sample_runs_the_sfv_refinement(checkpoint, image_file, tmp_path, capsys):
    """Catches: `--sampler sfv` not reaching SFVPipeline (the CLI silently running the Euler sampler), or its
    refinement being the one-step clip."""
    from sfv_jax.cli import main
    outs = {}
    for sampler, steps in (("sfv", "2"), ("euler", "1")):
        out = str(tmp_path / f"{sampler}.gif")
        assert main(["sample", "--checkpoint", checkpoint, "--image", image_file, "--out", out, "--num-frames",
                     str(FRAMES), "--height", str(HEIGHT), "--width", str(WIDTH), "--sampler", sampler,
                     "--steps", steps]) == 0
        assert f"{sampler} sampler" in capsys.readouterr().out
        with PIL.Image.open(out) as gif:
            assert gif.n_frames == FRAMES and gif.size == (WIDTH, HEIGHT)
            outs[sampler] = np.asarray(gif.convert("RGB"), np.float64)
    assert np.abs(outs["sfv"] - outs["euler"]).mean() > 1.0  # a second SF-V step changes the clip


BAD = {
    "missing image": (["--image", "{tmp}/nope.png"], "image file not found"),
    "not an image": (["--image", "{tmp}/text.png"], "not an image"),
    "height": (["--height", "50"], "multiples of 8"),
    "width": (["--width", "0"], "multiples of 8"),
    "frames": (["--num-frames", "0"], "--num-frames"),
    "chunk": (["--decode-chunk-size", "0"], "--decode-chunk-size"),
    "extension": (["--out", "{tmp}/clip.avi"], "unknown output extension"),
    "checkpoint": (["--checkpoint", "{tmp}/no_ckpt"], "checkpoint folder not found"),
    "not a checkpoint": (["--checkpoint", "{tmp}"], "not an sfv-jax checkpoint"),
    "sfv sampler steps": (["--sampler", "sfv", "--steps", "4"], "1 to 3 steps"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_cli_sample_bad_input(case, image_file, tmp_path, capsys):
    from sfv_jax.cli import main
    (tmp_path / "text.png").write_text("hello")
    tmp = str(tmp_path)
    base = {"--checkpoint": tmp + "/ckpt_dir", "--image": image_file, "--out": tmp + "/clip.gif",
            "--height": "48", "--width": "64", "--num-frames": "2"}
    os.makedirs(base["--checkpoint"], exist_ok=True)
    extra, expected = BAD[case]
    extra = [a.format(tmp=tmp) for a in extra]
    args = dict(base, **dict(zip(extra[::2], extra[1::2])))
    if case != "not a checkpoint" and case != "checkpoint" and base["--checkpoint"] == args["--checkpoint"]:
        # a folder that exists but is no checkpoint: only reached when the cheap checks pass
        pass
    before = set(os.listdir(tmp))
    assert main(["sample", *[x for kv in args.items() for x in kv]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("sfv-jax sample: error:") and expected in err, err
    assert "Traceback" not in err
    assert set(os.listdir(tmp)) == before
