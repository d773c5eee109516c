"""The toy models shipped in models/toy/ (README "Toy SVD stack"): they load from a clone, they are the toy
configs' architecture stored in bfloat16, and they make what their model cards say."""

from __future__ import annotations

import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, "models", "toy")


@pytest.fixture(scope="module")
def teacher():
    from sfv_jax.pipeline import SFVPipeline
    return SFVPipeline.from_pretrained(os.path.join(TOY, "teacher"))


def test_shipped_teacher_is_the_toy_architecture_in_bfloat16(teacher):
    """Catches shipping another architecture than configs/toy.py's (a micro test run, the full-size config), or
    float32 weights (four times the repository's share)."""
    import ml_dtypes
    import orbax.checkpoint as ocp

    from sfv_jax.config import load_config
    config = load_config(os.path.join(ROOT, "configs", "toy.py:teacher"))
    assert tuple(teacher.unet.config.block_out_channels) == tuple(config.unet.block_out_channels)
    assert tuple(teacher.vae.config.block_out_channels) == tuple(config.vae.block_out_channels)
    assert teacher.image_encoder.config.hidden_size == config.image_encoder.hidden_size
    stored = ocp.PyTreeCheckpointer().restore(os.path.join(TOY, "teacher", "params"))
    assert {np.asarray(a).dtype for tree in stored.values() for a in tree.values()} == {np.dtype(ml_dtypes.bfloat16)}


def test_shipped_teacher_moves_the_shapes_of_heldout_first_frames(teacher):
    """25 Euler steps with CFG from 4 held-out first frames: the tracked shapes keep their colour and travel
    (median speed > 0.5 px/frame; the data draws each axis's speed up to ~6 px/frame). Catches a teacher that
    copies its conditioning frame (speed 0) or loses its shapes, e.g. random or wrongly loaded weights; the teacher
    at ONE step fails it (its shapes fade: what SF-V's student fixes)."""
    from sfv_jax.eval.motion import Tolerances, judge_shape, track_shapes
    from sfv_jax.eval.toy import heldout_synthetic
    import PIL.Image

    real = heldout_synthetic(4, 8, 64, 64, seed=0)
    frames = teacher([PIL.Image.fromarray(c[0]) for c in real], num_frames=8, height=64, width=64,
                     num_inference_steps=25, seed=0, output_type="uint8")
    verdicts = [v for clip in frames for v in (judge_shape(t, Tolerances()) for t in track_shapes(clip)) if v]
    print(f"shipped teacher, 25 steps, 4 held-out frames: {len(verdicts)} judged shapes, speeds "
          f"{[round(v['speed'], 2) for v in verdicts]} px/frame, colour kept {sum(v['colour'] for v in verdicts)}")
    assert len(verdicts) >= 2
    assert np.median([v["speed"] for v in verdicts]) > 0.5
    assert np.mean([v["colour"] for v in verdicts]) >= 0.5
