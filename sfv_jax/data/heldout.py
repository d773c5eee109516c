"""Held-out clips for a run's periodic evaluation (`eval_loss` in metrics.jsonl), disjoint from the training clips.

synthetic: a second synthetic set (another seed); folder: the videos in eval.path; tfds: the eval.tfds_split
split of the training dataset. The clips are a fixed set: the first eval.clips clips of that source, each with
its temporal window drawn from (seed, index), so every evaluation of a run (and of a resumed run) sees the same.
"""

from __future__ import annotations

import copy

import numpy as np

from sfv_jax.data.clips import DataError
from sfv_jax.data.sources import make_source

# The held-out synthetic set's seed is the training set's plus this (a different stream of shapes and motions).
HELDOUT_SYNTHETIC_SEED_OFFSET = 1_000_003


def heldout_data_config(data_config, eval_config):
    """The data config the held-out clips are read with (a copy of data_config)."""
    held = copy.deepcopy(data_config.to_dict() if hasattr(data_config, "to_dict") else dict(data_config))
    source = held.get("source", "synthetic")
    if source == "synthetic":
        held["synthetic_seed"] = int(held.get("synthetic_seed", 0)) + HELDOUT_SYNTHETIC_SEED_OFFSET
        held["num_synthetic"] = int(eval_config.clips)
    elif source == "folder":
        if not eval_config.path:
            raise DataError("eval.every > 0 with data.source='folder' needs held-out videos: set "
                            "--config.eval.path=DIR (a folder of videos not in data.path), or --config.eval.every=0")
        held["path"] = eval_config.path
    elif source == "tfds":
        held["tfds_split"] = eval_config.tfds_split
    return held


def heldout_clips(data_config, eval_config, seed: int) -> np.ndarray:
    """uint8 (eval.clips, T, H, W, 3): the held-out set (fewer when the source holds fewer clips)."""
    source = make_source(heldout_data_config(data_config, eval_config))
    count = min(int(eval_config.clips), len(source))
    if count < 1:
        raise DataError("the held-out source holds no clips; point eval.path / eval.tfds_split at some")
    return np.stack([source.clip(i, np.random.default_rng([seed & (2 ** 63 - 1), i, 7])) for i in range(count)])
