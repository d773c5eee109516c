"""The synthetic motion report: real synthetic clips pass, the same clips with shuffled frames fail."""

import json

import numpy as np
import pytest

from sfv_jax.cli import main
from sfv_jax.data.synthetic import SyntheticVideos
from sfv_jax.eval.motion import Tolerances, judge_shape, motion_report, track_shapes


@pytest.fixture(scope="module")
def clips():
    """48 synthetic clips (10 frames of 40x56) and the same clips with their frames shuffled."""
    source = SyntheticVideos(48, 10, 40, 56, seed=3)
    real = np.stack([source.video(i) for i in range(len(source))])
    rng = np.random.default_rng(0)
    shuffled = np.stack([clip[rng.permutation(len(clip))] for clip in real])
    return source, real, shuffled


def test_report_separates_real_clips_from_frame_shuffled_ones(clips):
    """Catches a tracker that cannot see motion (shuffled clips keep every colour and size, only the order of
    positions changes), or one too strict for the real data (which must pass in full)."""
    _, real, shuffled = clips
    report = motion_report(shuffled, real)
    assert report["real"]["coherent_share"] == 1.0 and report["real"]["median_centroid_error_px"] < 0.3
    assert report["keeps_colour_share"] == 1.0  # shuffling keeps colours: only velocity can tell
    assert report["coherent_share"] < 0.2 and report["constant_velocity_share"] < 0.2
    assert report["median_centroid_error_px"] > 2.0
    assert report["speed_wasserstein_px_per_frame"] > 0.5
    assert report["real"]["num_clips"] == 48 and report["real"]["clips_not_judged"] < 24
    assert motion_report(real, real)["speed_wasserstein_px_per_frame"] == 0.0


def test_tracked_velocities_are_the_declared_ones(clips):
    """Catches swapped axes or a speed in the wrong unit: every judged shape's fitted velocity is one of the
    clip's declared velocities (synthetic.Shape.velocity, pixels per frame) within 0.1 px/frame (rasterised
    shapes jitter)."""
    source, real, _ = clips
    checked = 0
    for i in range(12):
        declared = np.array([s.velocity for s in source.motion(i)])
        for track in track_shapes(real[i]):
            if judge_shape(track, Tolerances()) is None:
                continue
            velocity, _ = track.fit()
            assert np.min(np.abs(declared - velocity).max(axis=1)) < 0.1, (i, velocity, declared)
            checked += 1
    assert checked >= 10


def soft_edges(clip: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) -> the same clip under a 3x3 box blur per frame: each shape's edge blends with what lies
    behind it, as a VAE decoder's output does."""
    padded = np.pad(clip.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = clip.shape[1:3]
    blurred = sum(padded[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) / 9
    return np.round(blurred).astype(np.uint8)


def test_soft_edged_clips_are_still_judged_and_pass(clips):
    """Blurred real clips keep their shapes, sizes and motion, so they are judged about as often as the sharp ones
    and pass. Catches a report that counts the blended edge pixels as shapes of their own (each then touches its
    shape in every frame, and almost no clip is judged: a generator's output would never be scored)."""
    _, real, _ = clips
    sharp, soft = motion_report(real), motion_report(np.stack([soft_edges(c) for c in real]))
    judged = lambda r: r["num_clips"] - r["clips_not_judged"]  # noqa: E731
    assert judged(soft) >= 0.8 * judged(sharp), (judged(soft), judged(sharp))
    assert soft["coherent_share"] >= 0.9, soft


def test_a_two_tone_shape_is_one_object():
    """A square shaded in two near colours (60 apart: two colour clusters) gliding at 2 px/frame is one shape that
    keeps colour, size and a constant velocity. Catches a tracker that splits it into two shapes, each touching
    the other in every frame, so that the clip is never judged (a generator's shading would hide its motion)."""
    clip = np.full((10, 40, 56, 3), 30, np.uint8)
    for t in range(10):
        x = 6 + 2 * t
        clip[t, 14:26, x:x + 6] = (200, 60, 60)
        clip[t, 14:26, x + 6:x + 12] = (200, 120, 60)
    tracks = track_shapes(clip)
    assert len(tracks) == 1, [t.colour for t in tracks]
    verdict = judge_shape(tracks[0], Tolerances())
    assert verdict["colour"] and verdict["size"] and verdict["velocity"], verdict
    assert abs(verdict["speed"] - 2.0) < 0.05, verdict


def test_a_clip_without_shapes_fails(clips):
    """Catches counting a blank (collapsed) generator output as coherent."""
    _, real, _ = clips
    blank = np.full_like(real[:4], 30)
    report = motion_report(blank)
    assert report["clips_without_shapes"] == 4 and report["coherent_share"] == 0.0


def test_motion_command_prints_and_writes_the_report(clips, tmp_path, capsys):
    """Catches a command whose numbers differ from the library function's."""
    _, real, shuffled = clips
    np.savez(tmp_path / "real.npz", real)
    np.savez(tmp_path / "fake.npz", shuffled)
    out = str(tmp_path / "motion.json")
    assert main(["eval", "motion", "--fake", str(tmp_path / "fake.npz"), "--real", str(tmp_path / "real.npz"),
                 "--json", out]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].startswith("fake: 48 clips") and printed[1].startswith("real: 48 clips")
    assert "coherent 100.0%" in printed[1] and printed[-1].startswith("speed distance")
    assert json.load(open(out)) == json.loads(json.dumps(motion_report(shuffled, real)))


def test_motion_command_reads_a_tfds_set(tmp_path, capsys):
    """Catches a broken tfds:NAME:SPLIT reader (split parsing, frame order, the source's own resizing): a TFDS
    dataset of 6 synthetic clips (PNG frames, lossless) gives the same report as the arrays themselves."""
    import importlib.util
    import os

    pytest.importorskip("tensorflow_datasets")
    path = os.path.join(os.path.dirname(__file__), "..", "tools", "build_tfds_videos.py")
    spec = importlib.util.spec_from_file_location("build_tfds_videos", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    source = SyntheticVideos(6, 8, 24, 40, seed=5)
    videos = [source.video(i) for i in range(6)]
    tool.build(str(tmp_path), "tiny_eval_videos", videos, 24, 40)
    capsys.readouterr()  # TFDS's build output
    out = str(tmp_path / "m.json")
    assert main(["eval", "motion", "--fake", "tfds:tiny_eval_videos:train", "--tfds-data-dir", str(tmp_path),
                 "--num-frames", "8", "--json", out]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("fake: 6 clips")
    assert json.load(open(out)) == json.loads(json.dumps(motion_report(np.stack(videos))))
