"""`sfv-jax demo`: what the shipped-model demo writes and prints, and its bad-input errors, on a tiny random
pipeline checkpoint (the shipped student's own quality is checked in tests/test_toy_models.py). The random-weights
journey (`--journey`) trains, so it runs in the slow suite."""

from __future__ import annotations

import os

import numpy as np
import PIL.Image
import pytest

from tests.test_notebook import tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(str(tmp_path_factory.mktemp("tiny")))


def test_demo_writes_the_clip_its_sheet_and_input_and_reports_each_shape(checkpoint, tmp_path, capsys):
    """From a held-out synthetic first frame: input.png is that frame (heldout_synthetic's clip 0 for the seed),
    the GIF has the UNet's frame count at its sample size, a contact sheet sits next to it, both calls print
    per-stage timings, and the motion report names every shape of the held-out clip. Catches a demo that ignores
    --checkpoint or --seed, writes another frame count, or drops the timings or the motion report."""
    from sfv_jax.cli import main
    from sfv_jax.eval.toy import heldout_synthetic
    from sfv_jax.video_io import read_all_frames

    out = tmp_path / "out"
    assert main(["demo", "--checkpoint", checkpoint, "--workdir", str(out), "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    real = heldout_synthetic(1, 4, 64, 64, seed=3)[0]  # configs/tiny.py: 4 frames, sample size 8 x 8
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(out / "input.png")), real[0])
    frames = np.stack(read_all_frames(str(out / "video_1step.gif")))
    assert frames.shape == (4, 64, 64, 3), frames.shape
    assert os.path.getsize(out / "video_1step.contact.png") > 0
    assert printed.count("unet ") == 2 and "first call" in printed and "second call" in printed, printed
    from sfv_jax.eval.motion import track_shapes
    shapes = len(track_shapes(real))
    held_out_part = printed.split("the held-out clip this frame starts")[1]
    assert shapes >= 1 and held_out_part.count("rgb(") == shapes, printed


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "no/such/folder"], "no such checkpoint"),
    (["--image", "missing.png"], "image file not found"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--sampler", "sfv", "--steps", "4"], "runs 1 to 3 steps"),
])
def test_bad_demo_input_fails_in_one_line_and_writes_nothing(checkpoint, args, message, tmp_path, capsys):
    """Catches a traceback instead of one line, a zero exit, or a workdir made before the input was checked."""
    from sfv_jax.cli import main
    args = args if "--checkpoint" in args else ["--checkpoint", checkpoint, *args]
    out = tmp_path / "out"
    assert main(["demo", *args, "--workdir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


@pytest.mark.slow
def test_journey_converts_trains_samples_and_exports(tmp_path, capsys):
    """`sfv-jax demo --journey` (random weights): all five stages run and leave their outputs. Catches a journey
    broken by a change to the converter, the training program or the exporter that their own tests miss."""
    from sfv_jax.cli import main
    out = tmp_path / "journey"
    assert main(["demo", "--journey", "--workdir", str(out), "--train-steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert all(f"{i}. " in printed for i in range(1, 6)), printed
    for name in ("diffusers_pipeline/model_index.json", "checkpoint/sfv_jax.json", "train/metrics.jsonl",
                 "video_1step.gif", "exported_pipeline/model_index.json"):
        assert os.path.exists(out / name), name
