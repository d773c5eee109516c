"""What every clip source provides, the frame maths they share, and the factory that picks one from the config.

A source is an indexable set of videos: `len(source)` items, `source.clip(index, rng)` -> uint8 (T, H, W, 3).
`rng` (a numpy Generator fixed by the iterator from (seed, epoch, position)) picks the temporal window, so a
clip is a pure function of (index, rng state): the same on every process and on every resume.
"""

from __future__ import annotations

import math
import os
from typing import Protocol

import numpy as np

from sfv_jax.errors import SfvError

SOURCES = ("synthetic", "folder", "tfds")


class DataError(SfvError):
    """The training data is missing, empty, unreadable or misconfigured."""


class VideoSource(Protocol):
    """An indexable set of videos; the iterator only uses these members."""

    skipped: int  # unreadable videos skipped so far (counted once per video)

    def __len__(self) -> int: ...

    def clip(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """Video `index` -> uint8 (T, H, W, 3) at the configured size; rng picks the temporal window."""
        ...


def frame_step(source_fps: float | None, target_fps: float | None) -> int:
    """How many source frames apart two clip frames are, so the clip plays at about target_fps (>= 1)."""
    if not source_fps or not target_fps or source_fps <= 0 or target_fps <= 0:
        return 1
    return max(1, int(round(source_fps / target_fps)))


def frame_indices(num_available: int, num_frames: int, step: int, rng: np.random.Generator) -> np.ndarray:
    """Source frame indices (num_frames,) of one clip: a random start, then every `step`-th frame.

    A video too short for num_frames * step holds its last frame (indices clipped to the end) rather than
    looping: looping would put a jump cut inside the clip, a still ending is motion the model may see for real.
    """
    span = (num_frames - 1) * step + 1
    start = int(rng.integers(0, num_available - span + 1)) if num_available > span else 0
    return np.minimum(start + step * np.arange(num_frames), max(num_available - 1, 0))


def resize_center_crop(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (h, w, 3) -> uint8 (height, width, 3): scale so the frame covers the target, then crop the centre.

    Covering (never letterboxing) keeps every training pixel real; the crop loses the edges of the long side.
    """
    from PIL import Image

    h, w = frame.shape[:2]
    if (h, w) == (height, width):
        return np.ascontiguousarray(frame[..., :3], dtype=np.uint8)
    scale = max(height / h, width / w)
    # ceil with a small tolerance so float error never leaves the scaled frame one pixel short of the target.
    new_h = max(height, math.ceil(h * scale - 1e-6))
    new_w = max(width, math.ceil(w * scale - 1e-6))
    image = Image.fromarray(np.ascontiguousarray(frame[..., :3], dtype=np.uint8))
    if (new_h, new_w) != (h, w):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return np.asarray(image.crop((left, top, left + width, top + height)), dtype=np.uint8)


def _get(config, name: str, default=None):
    """config.name, or `default` where an older config has no such field."""
    return config.get(name, default) if hasattr(config, "get") else getattr(config, name, default)


def make_source(data_config) -> VideoSource:
    """The source named by data_config.source; every check that can fail runs here, before training writes.

    Reads data_config.{source, num_frames, height, width} and, per source: num_synthetic (synthetic);
    path, fps (folder); tfds_name, tfds_split, tfds_data_dir, fps, tfds_source_fps (tfds).
    """
    source = _get(data_config, "source", "synthetic")
    num_frames, height, width = (int(_get(data_config, k)) for k in ("num_frames", "height", "width"))
    if min(num_frames, height, width) < 1:
        raise DataError(f"data.num_frames, data.height, data.width must be >= 1, "
                        f"got {num_frames}, {height}, {width}")
    num_workers = int(_get(data_config, "num_workers", 4) or 1)
    if source == "synthetic":
        from sfv_jax.data.synthetic import SyntheticVideos

        size = int(_get(data_config, "num_synthetic", 64))
        if size < 1:
            raise DataError(f"data.num_synthetic={size}; set it to the number of synthetic videos, >= 1")
        return SyntheticVideos(size, num_frames, height, width, seed=int(_get(data_config, "synthetic_seed", 0)))
    if source == "folder":
        from sfv_jax.data.folder import FolderVideos

        path = _get(data_config, "path")
        if not path:
            raise DataError("data.source='folder' needs data.path; set --config.data.path=DIR (a folder of videos)")
        return FolderVideos(os.path.expanduser(str(path)), num_frames, height, width,
                            fps=_get(data_config, "fps", 7), num_workers=num_workers)
    if source == "tfds":
        from sfv_jax.data.tfds_source import TfdsVideos

        name = _get(data_config, "tfds_name")
        if not name:
            raise DataError("data.source='tfds' needs data.tfds_name; set --config.data.tfds_name=NAME (e.g. ucf101)")
        return TfdsVideos(str(name), num_frames, height, width, split=_get(data_config, "tfds_split", "train") or "train",
                          data_dir=_get(data_config, "tfds_data_dir") or None,  # "" = TFDS's default too
                          fps=_get(data_config, "fps", 7),
                          source_fps=_get(data_config, "tfds_source_fps"))
    raise DataError(f"data.source={source!r} is unknown; use one of {', '.join(SOURCES)}")
