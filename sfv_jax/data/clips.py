"""What every clip source provides and the frame maths they share (a leaf: the sources import it, not each other).

A source is an indexable set of videos: `len(source)` items, `source.clip(index, rng)` -> uint8 (T, H, W, 3).
`rng` (a numpy Generator fixed by the iterator from (seed, epoch, position)) picks the temporal window, so a
clip is a pure function of (index, rng state): the same on every process and on every resume.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from sfv_jax.errors import SfvError


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
