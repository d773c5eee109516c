"""Procedural videos with known motion: discs and squares gliding over a gradient, drawn with numpy.

The built-in dataset of the demo and the tests: nothing to download, deterministic per (seed, index), and the
motion is declared (`SyntheticVideos.motion`) so a test can check what a model or a data path did to it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Backgrounds stay below 128 in every channel and every shape has a channel >= 160, so a shape's pixels can be
# told from the background by colour alone (tests locate shapes that way).
_BACKGROUND_MAX = 127
_SHAPE_MIN_PEAK = 160


@dataclasses.dataclass(frozen=True)
class Shape:
    """One moving shape; positions are pixel coordinates (x right, y down) of its centre."""

    kind: str  # "disc" (size = radius) or "square" (size = half side)
    colour: tuple[int, int, int]
    size: float
    start: tuple[float, float]  # centre at frame 0
    velocity: tuple[float, float]  # pixels per frame, constant over the clip

    def centre(self, t: float) -> tuple[float, float]:
        """Centre (x, y) at frame t."""
        return self.start[0] + t * self.velocity[0], self.start[1] + t * self.velocity[1]


class SyntheticVideos:
    """`num_videos` clips of uint8 (num_frames, height, width, 3); video i depends only on (seed, i).

    Each clip holds 1..max_shapes shapes moving at constant velocity; velocities and starts are chosen so every
    shape stays wholly inside the frame for the whole clip (no shape leaves, none is cut by the border).
    """

    skipped = 0  # nothing here is ever unreadable

    def __init__(self, num_videos: int, num_frames: int, height: int, width: int, seed: int = 0,
                 max_shapes: int = 3):
        self.num_videos, self.num_frames = int(num_videos), int(num_frames)
        self.height, self.width = int(height), int(width)
        self.seed, self.max_shapes = int(seed), int(max_shapes)

    def __len__(self) -> int:
        return self.num_videos

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        if not 0 <= index < self.num_videos:
            raise IndexError(f"synthetic video {index} out of range [0, {self.num_videos})")
        return np.random.default_rng([self.seed & (2 ** 63 - 1), index, stream])

    def motion(self, index: int) -> list[Shape]:
        """The shapes of video `index`, in drawing order (later ones are drawn on top)."""
        rng = self._rng(index, 1)
        h, w, t_last = self.height, self.width, max(self.num_frames - 1, 1)
        shapes = []
        for _ in range(int(rng.integers(1, self.max_shapes + 1))):
            kind = ("disc", "square")[int(rng.integers(2))]
            size = float(rng.uniform(max(1.5, min(h, w) / 10), max(2.0, min(h, w) / 5)))
            colour = rng.integers(40, 256, size=3)
            colour[int(rng.integers(3))] = rng.integers(_SHAPE_MIN_PEAK, 256)
            start, velocity = [], []
            for extent in (w, h):
                lo, hi = size, extent - 1 - size  # allowed centre range, whole shape inside the frame
                room = max(hi - lo, 0.0)
                v = float(rng.uniform(-0.8, 0.8)) * room / t_last
                first = lo + max(0.0, -v * t_last)
                last = hi - max(0.0, v * t_last)
                start.append(float(rng.uniform(first, max(first, last))))
                velocity.append(v)
            shapes.append(Shape(kind, tuple(int(c) for c in colour), size, tuple(start), tuple(velocity)))
        return shapes

    def background(self, index: int) -> np.ndarray:
        """uint8 (H, W, 3): a linear gradient between two dark colours along a random direction."""
        rng = self._rng(index, 2)
        c0, c1 = rng.uniform(0, _BACKGROUND_MAX, size=(2, 3))
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:self.height, 0:self.width].astype(np.float32)
        ramp = xx * np.cos(angle) + yy * np.sin(angle)
        ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
        return np.round(c0 + ramp[..., None] * (c1 - c0)).astype(np.uint8)

    def video(self, index: int) -> np.ndarray:
        """uint8 (num_frames, H, W, 3): video `index`."""
        background = self.background(index)
        shapes = self.motion(index)
        frames = np.repeat(background[None], self.num_frames, axis=0)
        for t in range(self.num_frames):
            for shape in shapes:
                draw_shape(frames[t], shape, t)
        return frames

    def clip(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """The whole video: synthetic clips are already num_frames long, so no temporal window to pick."""
        del rng
        return self.video(index)


def draw_shape(frame: np.ndarray, shape: Shape, t: int) -> None:
    """Paints `shape` at frame t into frame (H, W, 3) in place; only its bounding box is touched."""
    cx, cy = shape.centre(t)
    s = shape.size
    h, w = frame.shape[:2]
    y0, y1 = max(int(np.floor(cy - s)), 0), min(int(np.ceil(cy + s)) + 1, h)
    x0, x1 = max(int(np.floor(cx - s)), 0), min(int(np.ceil(cx + s)) + 1, w)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    if shape.kind == "disc":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= s * s
    else:
        mask = (np.abs(xx - cx) <= s) & (np.abs(yy - cy) <= s)
    frame[y0:y1, x0:x1][mask] = shape.colour
