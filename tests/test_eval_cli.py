"""`sfv-jax eval`: bad input gives one-line errors (exit 2) and leaves nothing behind; `eval generate` conditions
each clip on a real first frame and writes what `eval fvd` / `eval motion` read."""

import os

import numpy as np
import PIL.Image
import pytest

from sfv_jax.cli import main
from sfv_jax.eval.weights import convert_i3d_pickle, packaged_pickle


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    return convert_i3d_pickle(packaged_pickle(), str(tmp_path_factory.mktemp("i3d") / "i3d.safetensors"))


def write_gif(path, frames):
    images = [PIL.Image.fromarray(f) for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=100, loop=0)


def clips(n, t, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, t, h, w, 3), dtype=np.uint8)


def fails(argv, capsys, *fragments):
    """Runs the command; asserts exit code 2 and ONE stderr line holding every fragment."""
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("warning:")]
    assert len(err) == 1 and err[0].startswith("sfv-jax eval: error: "), err
    for fragment in fragments:
        assert fragment in err[0], err[0]


def test_fvd_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path, capsys, weights_file):
    """Catches clips of mixed lengths or sizes scored together, a corrupt video skipped silently (as training
    would), too-short clips reaching I3D, and half-written --json / --stats files after an error."""
    good = str(tmp_path / "good.npz")
    np.savez(good, clips(2, 9, 32, 32))
    out = ["--json", str(tmp_path / "r.json"), "--stats", str(tmp_path / "s.npz"), "--i3d-weights", weights_file]

    lengths = tmp_path / "lengths"
    lengths.mkdir()
    write_gif(lengths / "a.gif", clips(1, 10, 32, 32)[0])
    write_gif(lengths / "b.gif", clips(1, 12, 32, 32, 1)[0])
    fails(["eval", "fvd", "--real", str(lengths), "--fake", good, "--num-frames", "0", *out], capsys,
          "mixed frame counts", "b.gif is 12 frames", "a.gif is 10 frames")

    sizes = tmp_path / "sizes"
    sizes.mkdir()
    write_gif(sizes / "a.gif", clips(1, 9, 32, 32)[0])
    write_gif(sizes / "b.gif", clips(1, 9, 32, 40, 1)[0])
    fails(["eval", "fvd", "--real", str(sizes), "--fake", good, "--num-frames", "9", *out], capsys,
          "mixed frame sizes", "b.gif is 9 frames of 40x32")

    broken = tmp_path / "broken"
    broken.mkdir()
    write_gif(broken / "a.gif", clips(1, 9, 32, 32)[0])
    (broken / "b.mp4").write_bytes(b"not a video at all")
    fails(["eval", "fvd", "--real", str(broken), "--fake", good, "--num-frames", "9", *out], capsys,
          "b.mp4: unreadable video")

    fails(["eval", "fvd", "--real", good, "--fake", good, "--num-frames", "16", *out], capsys,
          "good.npz: clips have 9 frames, fewer than the 16 asked")
    short = str(tmp_path / "short.npz")
    np.savez(short, clips(2, 8, 32, 32))
    fails(["eval", "fvd", "--real", short, "--fake", short, "--num-frames", "0", *out], capsys,
          "at least 9 frames, got 8")
    two = str(tmp_path / "two.npz")
    np.savez(two, a=clips(1, 9, 8, 8), b=clips(1, 9, 8, 8))
    fails(["eval", "fvd", "--real", two, "--fake", good, "--num-frames", "9", *out], capsys, "holds 2 arrays")
    floats = str(tmp_path / "floats.npz")
    np.savez(floats, clips(1, 9, 8, 8).astype(np.float32))
    fails(["eval", "fvd", "--real", floats, "--fake", good, "--num-frames", "9", *out], capsys,
          "float32", "expected uint8")
    fails(["eval", "fvd", "--real", str(tmp_path / "nowhere"), "--fake", good, *out], capsys, "nowhere: no such folder")
    fails(["eval", "fvd", "--fake", good, "--i3d-weights", weights_file], capsys, "give --real SRC, or --stats")
    fails(["eval", "fvd", "--real", good, "--fake", good, "--num-frames", "9", "--i3d-weights",
           str(tmp_path / "none.safetensors")],
          capsys, "none.safetensors: I3D weights file not found")
    fails(["eval", "fvd", "--real", "tfds:", "--fake", good, *out], capsys, "tfds:NAME")
    assert sorted(os.listdir(tmp_path)) == ["broken", "floats.npz", "good.npz", "lengths", "short.npz", "sizes",
                                            "two.npz"]


# ---------------------------------------------------------------- eval generate

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """The micro SF-V config's random pipeline (unet, vae, image_encoder) as an sfv-jax checkpoint."""
    from sfv_jax.checkpoint import save_checkpoint
    from sfv_jax.config import load_config
    from sfv_jax.models.factory import random_components

    path = str(tmp_path_factory.mktemp("ckpt") / "micro")
    save_checkpoint(path, random_components(load_config("configs/tiny_sfv.py:micro"), seed=0))
    return path


def test_generate_conditions_each_clip_on_its_real_first_frame(tiny_checkpoint, tmp_path, capsys):
    """Catches clips paired with the wrong image (padding of the short last batch, ordering), frames other than
    the first conditioning, and outputs `eval motion` cannot read: 3 real clips in batches of 2 give 3 clips,
    each equal to the pipeline called directly on that clip's first frame with the batch's seed."""
    from sfv_jax.pipeline import SFVPipeline

    real = clips(3, 4, 32, 48, seed=5)
    real[:, 1:] = 255 - real[:, 1:]  # later frames must not matter
    np.savez(tmp_path / "real.npz", real)
    out = str(tmp_path / "gen.npz")
    argv = ["eval", "generate", "--checkpoint", tiny_checkpoint, "--images", str(tmp_path / "real.npz"),
            "--steps", "1", "--num-frames", "3", "--batch-size", "2", "--seed", "7"]
    assert main(argv + ["--out", out]) == 0
    assert "wrote" in capsys.readouterr().out
    with np.load(out) as f:
        generated = f["videos"]
    assert generated.shape == (3, 3, 32, 48, 3) and generated.dtype == np.uint8

    pipe = SFVPipeline.from_pretrained(tiny_checkpoint)
    images = [PIL.Image.fromarray(real[i, 0]) for i in (0, 1, 2, 2)]
    kwargs = dict(num_frames=3, height=32, width=48, num_inference_steps=1, output_type="uint8")
    np.testing.assert_array_equal(generated[:2], pipe(images[:2], seed=7, **kwargs))
    np.testing.assert_array_equal(generated[2], pipe(images[2:], seed=8, **kwargs)[0])
    assert not np.array_equal(generated[0], generated[1])

    folder = str(tmp_path / "gen_videos")
    assert main(argv + ["--out", folder]) == 0
    assert sorted(os.listdir(folder)) == ["00000.mp4", "00001.mp4", "00002.mp4"]
    assert main(["eval", "motion", "--fake", folder]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("fake: 3 clips")

    fails(argv + ["--out", folder], capsys, "already exists")
    fails(["eval", "generate", "--checkpoint", tiny_checkpoint, "--images", str(tmp_path / "real.npz"),
           "--height", "30", "--out", str(tmp_path / "odd")], capsys, "multiples of 8")
    assert not os.path.exists(tmp_path / "odd") and not [f for f in os.listdir(tmp_path) if f.startswith(".")]


SHARDED_GENERATE = r"""
import json, sys
import jax, numpy as np, PIL.Image
from sfv_jax.cli import main
from sfv_jax.pipeline import SFVPipeline

checkpoint, real, out = sys.argv[1:4]
images = [PIL.Image.fromarray(frame) for frame in np.load(real)["arr_0"][:, 0]]
kwargs = dict(num_frames=3, height=32, width=48, num_inference_steps=2, seed=3)
one = SFVPipeline.from_pretrained(checkpoint)(images, **kwargs)
both = SFVPipeline.from_pretrained(checkpoint).shard_batch()
two = both(images, **kwargs)
latents = both.last_compiled["unet"].input_shardings[0][1]  # (state, latents, ...)
shape = (4, 3, 32 // both.vae_scale_factor, 48 // both.vae_scale_factor, both.unet.config.out_channels)
code = main(["eval", "generate", "--checkpoint", checkpoint, "--images", real, "--out", out, "--steps", "1",
             "--num-frames", "3", "--batch-size", "3", "--devices", "2"])
print("RESULT" + json.dumps({"devices": len(jax.devices()), "code": code,
      "latent_shard": list(latents.shard_shape(shape)), "latent_shape": list(shape),
      "rel": float(np.linalg.norm(two - one) / np.linalg.norm(one))}))
"""


def test_generate_splits_each_batch_over_devices(tiny_checkpoint, tmp_path, capsys):
    """On 2 fake CPU devices: the pipeline's sampler compiles for latents split 2 + 2 (not replicated: every device
    sampling every clip), its clips equal the single-device ones (rel 1e-5: only summation order differs), and
    `eval generate --devices 2 --batch-size 3` (rounded up to 4) writes every clip once. Also catches `--devices`
    beyond what the process has being accepted."""
    import json
    import subprocess
    import sys

    real = clips(5, 4, 32, 48, seed=2)
    np.savez(tmp_path / "real.npz", real[:4])
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    out = str(tmp_path / "gen.npz")
    proc = subprocess.run([sys.executable, "-c", SHARDED_GENERATE, tiny_checkpoint, str(tmp_path / "real.npz"), out],
                          env=env, capture_output=True, text=True, timeout=900,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT"):])
    assert result["devices"] == 2 and result["code"] == 0
    assert result["latent_shard"] == [2, *result["latent_shape"][1:]]
    assert result["rel"] < 1e-5, result
    with np.load(out) as f:
        assert f["videos"].shape == (4, 3, 32, 48, 3)
    fails(["eval", "generate", "--checkpoint", tiny_checkpoint, "--images", str(tmp_path / "real.npz"),
           "--devices", "1000", "--out", str(tmp_path / "many")], capsys, "--devices 1000", "device")
    assert not os.path.exists(tmp_path / "many")


def test_eval_toy_scores_generated_clips_against_heldout_ones(tiny_checkpoint, weights_file, tmp_path, capsys):
    """`eval toy` = generate from held-out first frames + FVD + motion report, recomputed here step by step:
    catches clips generated from the wrong first frames or seeds, a held-out set drawn from the training stream,
    frames stretched for I3D in one set only (or not at all: 4-frame clips are too short for I3D), and --real-stats
    reused under other settings (one-line error, exit 2)."""
    import json

    from sfv_jax.checkpoint import fingerprint
    from sfv_jax.data.synthetic import SyntheticVideos
    from sfv_jax.eval.motion import motion_report
    from sfv_jax.eval.protocol import I3DFeatures
    from sfv_jax.eval.stats import frechet_distance
    from sfv_jax.eval.toy import heldout_synthetic, i3d_frame_repeat
    from sfv_jax.eval.generate import generate_clips
    from sfv_jax.pipeline import SFVPipeline

    stats, out = str(tmp_path / "real_stats.npz"), str(tmp_path / "toy.json")
    argv = ["eval", "toy", "--checkpoint", tiny_checkpoint, "--steps", "1", "--num-clips", "3", "--batch-size", "2",
            "--seed", "4", "--i3d-weights", weights_file, "--real-stats", stats]
    assert main(argv + ["--json", out]) == 0
    printed = json.loads(capsys.readouterr().out)
    with open(out) as f:
        result = json.load(f)
    assert result == printed
    # the micro UNet's 4 frames (its default) are stretched x3 to reach I3D's 9
    assert result["clip_shape"] == [4, 64, 64, 3] and result["i3d_frame_repeat"] == 3 == i3d_frame_repeat(4)
    assert result["seconds_per_clip"] > 0 and 0 < result["unet_seconds_per_clip"] <= result["seconds_per_clip"]
    assert result["checkpoint_fingerprint"] == fingerprint(tiny_checkpoint)  # what the toy table reuses rows by

    real = heldout_synthetic(3, 4, 64, 64, seed=4)
    assert not any(np.array_equal(real[0], SyntheticVideos(64, 4, 64, 64, seed=s).video(0)) for s in (0, 4))
    pipe = SFVPipeline.from_pretrained(tiny_checkpoint)
    fake = np.stack(list(generate_clips(pipe, real[:, 0], 2, 4, num_frames=4, height=64, width=64,
                                        num_inference_steps=1)))
    extractor = I3DFeatures(batch_size=2, weights=weights_file)
    f_real, f_fake = (extractor(np.repeat(x, 3, axis=1)) for x in (real, fake))
    expected = frechet_distance(f_real.mean(0), np.cov(f_real, rowvar=False), f_fake.mean(0),
                                np.cov(f_fake, rowvar=False))
    assert abs(result["fvd"] - expected) <= 1e-6 * max(1.0, abs(expected)), (result["fvd"], expected)
    motion = motion_report(fake, real)
    assert result["motion_coherent_share"] == motion["coherent_share"]
    assert result["speed_distance"] == motion["speed_wasserstein_px_per_frame"]

    assert main(argv) == 0  # the saved held-out statistics are reused: the same FVD
    assert json.loads(capsys.readouterr().out)["fvd"] == pytest.approx(result["fvd"], rel=1e-9)
    fails(["eval", "toy", "--checkpoint", tiny_checkpoint, "--num-clips", "4", "--i3d-weights", weights_file,
           "--real-stats", stats], capsys, stats, "another protocol", "heldout_clips")
    fails(["eval", "toy", "--checkpoint", tiny_checkpoint, "--sampler", "sfv", "--steps", "5"], capsys,
          "--sampler sfv", "1 to 3")
