"""A set of videos -> I3D feature statistics -> FVD, under StyleGAN-V's protocol (protocol.py)."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from sfv_jax.eval.protocol import FEATURES, SIZE
from sfv_jax.eval.stats import FeatureStats, warn_if_rank_deficient
from sfv_jax.eval.video_sets import batches


def protocol(num_frames: int | None) -> dict:
    """What statistics depend on: saved with them, checked when they are reused."""
    return {"protocol": "stylegan-v", "features": f"i3d-kinetics400-logits-{FEATURES}", "size": SIZE,
            "num_frames": "full" if num_frames is None else int(num_frames)}


@dataclasses.dataclass
class SetStats:
    """Mean (400,), covariance (400, 400), number of videos, covariance rank, and where they came from."""

    mean: np.ndarray
    cov: np.ndarray
    count: int
    rank: int
    source: str
    clip_shape: tuple | None = None  # (T, H, W, 3) of the clips, where known

    def summary(self) -> dict:
        shape = None if self.clip_shape is None else list(self.clip_shape)
        return {"source": self.source, "num_videos": self.count, "covariance_rank": self.rank, "clip_shape": shape}


def set_stats(video_set, extractor, desc: str = "I3D", limit: int | None = None,
              progress: bool | None = None) -> SetStats:
    """Streams the set through `extractor` (protocol.I3DFeatures) into float64 statistics, with a tqdm bar.

    Warns (stats.RankWarning) when the set is too small for a full-rank covariance.
    """
    from tqdm import tqdm

    stats, shape = FeatureStats(FEATURES), None
    total = len(video_set) if limit is None else min(limit, len(video_set))
    with tqdm(total=total, desc=desc, unit="video", disable=(not sys.stderr.isatty()) if progress is None
              else not progress) as bar:
        for batch in batches(video_set, extractor.batch_size, limit):
            shape = tuple(batch.shape[1:])
            stats.add(extractor(batch))
            bar.update(len(batch))
    cov = stats.cov
    rank = warn_if_rank_deficient(cov, stats.count, video_set.name)
    return SetStats(stats.mean, cov, stats.count, rank, video_set.name, shape)
