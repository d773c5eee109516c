"""FVD: the protocol's resize against torch, streaming statistics, the Frechet distance, and `sfv-jax eval fvd`
end to end against a direct numpy/scipy computation."""

import json
import warnings

import jax
import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from flax import nnx

from sfv_jax.cli import main
from sfv_jax.eval.protocol import preprocess
from sfv_jax.eval.stats import (FeatureStats, RankWarning, StatsError, frechet_distance, load_stats, save_stats,
                                warn_if_rank_deficient)
from sfv_jax.eval.weights import convert_i3d_pickle, load_i3d, packaged_pickle


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    return convert_i3d_pickle(packaged_pickle(), str(tmp_path_factory.mktemp("i3d") / "i3d.safetensors"))


def torch_resize(clips: np.ndarray, size: int = 224) -> np.ndarray:
    """The protocol as torch writes it: [-1, 1], then F.interpolate bilinear, align_corners=False, no antialias."""
    x = torch.from_numpy(clips.astype(np.float32) / 127.5 - 1.0)
    b, t, h, w, c = x.shape
    x = x.reshape(b * t, h, w, c).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return x.permute(0, 2, 3, 1).reshape(b, t, size, size, c).numpy()


@pytest.mark.parametrize("shape", [(2, 3, 64, 48), (1, 2, 240, 320), (1, 2, 224, 224), (1, 1, 37, 501)])
def test_resize_equals_torch_bilinear(shape):
    """Catches align_corners=True, a missing clamp of negative source positions, antialiasing when shrinking
    (jax.image.resize's default), or scaling to [0, 1]: upscaling, downscaling, identity and mixed sizes."""
    clips = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours = np.asarray(jax.jit(preprocess)(clips))
    ref = torch_resize(clips)
    assert ours.shape == ref.shape == (*shape[:2], 224, 224, 3)
    assert np.abs(ours - ref).max() < 2e-6
    assert ours.min() >= -1 - 1e-6 and ours.max() <= 1 + 1e-6


def test_streaming_statistics_equal_one_shot():
    """Catches float32 accumulation, a biased (ddof 0) covariance, or cancellation in sum-of-squares formulas:
    features far from zero (offset 1e4) added in uneven batches equal np.mean / np.cov of the whole table."""
    rng = np.random.default_rng(0)
    features = 1e4 + rng.normal(size=(1000, 40)) @ rng.normal(size=(40, 40))
    stats = FeatureStats(40)
    for chunk in np.split(features, [1, 7, 300, 301, 999]):
        stats.add(chunk.astype(np.float64))
    assert stats.count == 1000
    np.testing.assert_allclose(stats.mean, features.mean(axis=0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(stats.cov, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-9)


def test_frechet_distance_of_a_set_with_itself_is_zero_and_matches_the_closed_form():
    """Catches a missing factor 2, the trace of sqrtm taken of S1 + S2, or the squared mean term dropped:
    against itself FVD is ~0; for commuting (diagonal) covariances it is |dmu|^2 + sum (sqrt a - sqrt b)^2."""
    rng = np.random.default_rng(1)
    features = rng.normal(size=(800, 400)) * rng.uniform(0.5, 3, 400)
    mu, cov = features.mean(axis=0), np.cov(features, rowvar=False)
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-6 * np.trace(cov)
    a, b = rng.uniform(0.1, 4, 400), rng.uniform(0.1, 4, 400)
    m1, m2 = rng.normal(size=400), rng.normal(size=400)
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(expected, rel=1e-9)


def test_rank_warning_states_the_rank():
    """Catches a silent FVD from too few videos: 30 videos of 400 features give rank 29."""
    features = np.random.default_rng(2).normal(size=(30, 400))
    with pytest.warns(RankWarning, match="30 videos has rank 29 < 400"):
        assert warn_if_rank_deficient(np.cov(features, rowvar=False), 30, "set") == 29
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_rank_deficient(np.cov(np.random.default_rng(3).normal(size=(500, 400)), rowvar=False), 500, "set")


def test_saved_statistics_refuse_another_protocol(tmp_path):
    """Catches statistics of 16-frame clips being reused for whole videos."""
    path = str(tmp_path / "s.npz")
    save_stats(path, np.zeros(3), np.eye(3), 5, {"num_frames": 16}, (16, 64, 80, 3))
    mean, cov, count, shape = load_stats(path, {"num_frames": 16})
    assert count == 5 and np.array_equal(cov, np.eye(3)) and shape == (16, 64, 80, 3)
    with pytest.raises(StatsError, match="num_frames: 16 here, full asked"):
        load_stats(path, {"num_frames": "full"})


def test_fvd_command_equals_a_direct_computation(weights_file, tmp_path, capsys):
    """Catches any drift between the command (npz reader, batching with a padded last batch, sharded I3D,
    streaming statistics, --stats reuse, FVD of a set against itself) and the protocol written out directly:
    torch's resize, I3D logits, np.cov and scipy's sqrtm. 4 + 3 clips of 9 frames at 40x56 (cheap;
    rank-deficient, hence the warning)."""
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (7, 9, 40, 56, 3)).astype(np.int64)
    real = np.clip(base[:4] + rng.integers(-30, 31, (4, 9, 40, 56, 3)), 0, 255).astype(np.uint8)
    fake = np.clip(base[4:] // 2 + 60, 0, 255).astype(np.uint8)
    np.savez(tmp_path / "real.npz", clips=real)
    np.savez(tmp_path / "fake.npz", clips=fake)

    graphdef, state = nnx.split(load_i3d(weights_file))
    model = jax.jit(lambda x: nnx.merge(graphdef, state)(x))
    both = np.asarray(model(torch_resize(np.concatenate([real, fake]))), np.float64)  # one compile
    feats = {"real": both[:4], "fake": both[4:]}
    mu1, mu2 = feats["real"].mean(0), feats["fake"].mean(0)
    s1, s2 = np.cov(feats["real"], rowvar=False), np.cov(feats["fake"], rowvar=False)
    direct = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2)))

    stats, out = str(tmp_path / "real_stats.npz"), str(tmp_path / "fvd.json")
    argv = ["eval", "fvd", "--fake", str(tmp_path / "fake.npz"), "--num-frames", "9", "--batch-size", "2",
            "--i3d-weights", weights_file, "--stats", stats]
    assert main(argv + ["--real", str(tmp_path / "real.npz"), "--json", out]) == 0
    captured = capsys.readouterr()
    last = captured.out.strip().splitlines()[-1]
    assert last.startswith("FVD ") and float(last.split()[1]) == pytest.approx(direct, rel=1e-4)
    assert "has rank 3 < 400" in captured.err and "has rank 2 < 400" in captured.err
    result = json.load(open(out))
    assert result["fvd"] == pytest.approx(direct, rel=1e-4) and result["real"]["num_videos"] == 4
    assert result["fake"]["clip_shape"] == [9, 40, 56, 3] and result["protocol"]["num_frames"] == 9
    # Second run: the real statistics come from --stats (--real is not needed); scored against the real clips
    # themselves, FVD is ~0 (the saved statistics are the real set's, not the fake's).
    argv[argv.index("--fake") + 1] = str(tmp_path / "real.npz")
    assert main(argv) == 0
    self_fvd = float(capsys.readouterr().out.strip().splitlines()[-1].split()[1])
    assert abs(self_fvd) < 1e-4 * np.trace(s1), (self_fvd, np.trace(s1))


SHARDED = r"""
import json, sys
import jax, numpy as np
from sfv_jax.eval.protocol import I3DFeatures, _logits
clips = np.random.default_rng(4).integers(0, 256, (3, 9, 32, 40, 3), dtype=np.uint8)
both = I3DFeatures(batch_size=3, weights=sys.argv[1])
one = I3DFeatures(batch_size=3, weights=sys.argv[1], devices=jax.devices()[:1])
batch = jax.device_put(np.concatenate([clips, clips[:1]]), both.clip_sharding)
out = _logits(both.graphdef, both.state, batch)
a, b = both(clips), one(clips)
print("RESULT" + json.dumps({"devices": len(jax.devices()), "batch_size": both.batch_size,
      "in_shard": list(batch.sharding.shard_shape(batch.shape)), "out_shard": list(out.sharding.shard_shape(out.shape)),
      "rel": float(np.linalg.norm(a - b) / np.linalg.norm(b)), "shape": list(a.shape)}))
"""


@pytest.mark.slow
def test_i3d_features_split_the_batch_over_devices(weights_file):
    """Catches a replicated batch (every device computing every clip) or a wrong gather: on 2 fake CPU devices
    the batch (3 clips, rounded up to 4) is split 2 + 2, and the features equal the single-device ones."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SHARDED, weights_file], env=env, capture_output=True, text=True,
                          timeout=900, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT"):])
    assert out["devices"] == 2 and out["batch_size"] == 4
    assert out["in_shard"] == [2, 9, 32, 40, 3] and out["out_shard"] == [2, 400]
    assert out["shape"] == [3, 400] and out["rel"] < 1e-5, out
