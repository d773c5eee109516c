"""Sets of videos to evaluate: a folder of video files, an .npz holding one uint8 array, or a TFDS dataset.

`open_video_set(src, num_frames)` reads SRC as the command line spells it: a folder (read with the training
data's readers, sfv_jax/data/folder.py), `FILE.npz` holding one uint8 array (N, T, H, W, 3), or
`tfds:NAME[:SPLIT]` (sfv_jax/data/tfds_source.py). Clips are the first `num_frames` frames of each video, or
whole videos with num_frames=None. Videos stream one at a time (10,000 never sit in memory together), and
`batches` checks that every clip of a set has the same shape: FVD over mixed shapes would compare
different things.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from sfv_jax.errors import SfvError


class VideoSetError(SfvError):
    """A set of videos is missing, unreadable, empty, or mixes clip shapes."""


class FolderSet:
    """Video files under a folder (sorted by path), decoded from their first frame."""

    def __init__(self, root: str, num_frames: int | None):
        from sfv_jax.data.folder import VIDEO_EXTENSIONS, list_videos

        if not os.path.isdir(root):
            raise VideoSetError(f"{root}: no such folder (expected a folder of videos, FILE.npz or tfds:NAME)")
        self.paths = list_videos(root)
        if not self.paths:
            raise VideoSetError(f"{root}: holds no video files ({', '.join(VIDEO_EXTENSIONS)})")
        self.name, self.num_frames = root, num_frames

    def __len__(self) -> int:
        return len(self.paths)

    def clips(self) -> Iterator[tuple[str, np.ndarray]]:
        for path in self.paths:
            try:
                frames = _decode(path, self.num_frames)
            except Exception as e:  # noqa: BLE001 - any decoder failure means the same thing: unreadable
                detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                raise VideoSetError(f"{path}: unreadable video ({detail})") from None
            if not frames:
                raise VideoSetError(f"{path}: holds no frames")
            if self.num_frames is not None and len(frames) < self.num_frames:
                raise VideoSetError(f"{path}: has {len(frames)} frames, fewer than the {self.num_frames} asked "
                                    f"(--num-frames); use shorter clips or drop this video")
            yield path, np.stack(frames)


def _decode(path: str, limit: int | None) -> list[np.ndarray]:
    """The first `limit` frames (all with None) of a video file as uint8 (H, W, 3)."""
    frames = []
    if path.lower().endswith(".gif"):
        from PIL import Image, ImageSequence

        with Image.open(path) as image:
            for frame in ImageSequence.Iterator(image):
                if limit is not None and len(frames) >= limit:
                    break
                frames.append(np.asarray(frame.convert("RGB")))
        return frames
    import imageio.v2 as imageio

    with imageio.get_reader(path, format="FFMPEG") as reader:
        for frame in reader:
            if limit is not None and len(frames) >= limit:
                break
            frames.append(np.asarray(frame)[..., :3])
    return frames


class ArraySet:
    """Clips from an .npz file holding exactly one uint8 array (N, T, H, W, 3)."""

    def __init__(self, path: str, num_frames: int | None):
        try:
            with np.load(path, allow_pickle=False) as f:
                if len(f.files) != 1:
                    raise VideoSetError(f"{path}: holds {len(f.files)} arrays ({', '.join(f.files[:5])}); "
                                        f"expected exactly one uint8 array (N, T, H, W, 3)")
                array = f[f.files[0]]
        except (OSError, ValueError) as e:
            raise VideoSetError(f"{path}: unreadable .npz ({str(e).splitlines()[0][:200]})") from None
        if array.dtype != np.uint8 or array.ndim != 5 or array.shape[-1] != 3:
            raise VideoSetError(f"{path}: holds {array.dtype} {array.shape}; expected uint8 (N, T, H, W, 3)")
        if num_frames is not None:
            if array.shape[1] < num_frames:
                raise VideoSetError(f"{path}: clips have {array.shape[1]} frames, fewer than the {num_frames} "
                                    f"asked (--num-frames)")
            array = array[:, :num_frames]
        self.name, self.array = path, array

    def __len__(self) -> int:
        return len(self.array)

    def clips(self) -> Iterator[tuple[str, np.ndarray]]:
        for i, clip in enumerate(self.array):
            yield f"{self.name}[{i}]", clip


class MemorySet:
    """Clips already in memory: uint8 (N, T, H, W, 3), under a name for messages."""

    def __init__(self, array: np.ndarray, name: str):
        if array.dtype != np.uint8 or array.ndim != 5 or array.shape[-1] != 3:
            raise VideoSetError(f"{name}: holds {array.dtype} {array.shape}; expected uint8 (N, T, H, W, 3)")
        self.name, self.array = name, array

    def __len__(self) -> int:
        return len(self.array)

    def clips(self) -> Iterator[tuple[str, np.ndarray]]:
        for i, clip in enumerate(self.array):
            yield f"{self.name}[{i}]", clip


class TfdsSet:
    """Examples of a prepared TFDS video dataset: `tfds:NAME[:SPLIT]` (default split: train)."""

    def __init__(self, spec: str, num_frames: int | None, data_dir: str | None = None):
        from sfv_jax.data.tfds_source import TfdsVideos

        parts = spec.split(":", 2)
        if len(parts) < 2 or not parts[1]:
            raise VideoSetError(f"{spec}: write a TFDS set as tfds:NAME or tfds:NAME:SPLIT")
        if num_frames is None:
            raise VideoSetError(f"{spec}: TFDS sets are read as fixed-length clips; pass --num-frames N")
        name, split = parts[1], (parts[2] if len(parts) > 2 and parts[2] else "train")
        # Height and width only matter to TfdsVideos.clip (which resizes); frames() returns the stored size.
        self.source = TfdsVideos(name, num_frames, 1, 1, split=split, data_dir=data_dir, fps=None)
        self.name, self.num_frames = spec, num_frames

    def __len__(self) -> int:
        return len(self.source)

    def clips(self) -> Iterator[tuple[str, np.ndarray]]:
        for i in range(len(self.source)):
            # A fixed start per example (the rng only matters for longer videos): the same set on every run.
            frames = self.source.frames(i, np.random.default_rng(i))
            yield f"{self.name}[{i}]", np.stack(frames)


def open_video_set(src: str, num_frames: int | None, tfds_data_dir: str | None = None):
    """The set SRC names (see the module docstring); errors are VideoSetError (or the TFDS source's DataError)."""
    if num_frames is not None and num_frames < 1:
        raise VideoSetError(f"--num-frames must be >= 1 (or 0 for whole videos), got {num_frames}")
    if src.startswith("tfds:"):
        return TfdsSet(src, num_frames, tfds_data_dir)
    if src.lower().endswith(".npz"):
        if not os.path.isfile(src):
            raise VideoSetError(f"{src}: no such file")
        return ArraySet(src, num_frames)
    return FolderSet(src, num_frames)


def batches(video_set, batch_size: int, limit: int | None = None) -> Iterator[np.ndarray]:
    """uint8 batches (b, T, H, W, 3) of the set's clips (the first `limit` clips if given); raises VideoSetError
    at the first clip whose shape differs from the first clip's, naming both."""
    first, batch = None, []
    for i, (label, clip) in enumerate(video_set.clips()):
        if limit is not None and i >= limit:
            break
        if first is None:
            first = (label, clip.shape)
        elif clip.shape != first[1]:
            what = "frame counts" if clip.shape[0] != first[1][0] else "frame sizes"
            raise VideoSetError(f"{video_set.name}: mixed {what}: {label} is {_shape(clip.shape)} but "
                                f"{first[0]} is {_shape(first[1])}; every clip of a set must have one shape")
        batch.append(clip)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def _shape(shape) -> str:
    t, h, w, _ = shape
    return f"{t} frames of {w}x{h}"
