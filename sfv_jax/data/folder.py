"""A folder of video files (mp4, webm, avi, mov, mkv through PyAV; gif through Pillow; see sfv_jax.video_io).

Every file is probed once at construction (can its first frame be decoded? how many frames, at what fps?).
An unreadable file is skipped, counted and logged, never fatal: a crawl of thousands of videos always has a
few broken ones. A folder that is missing, or holds no readable video, is an error raised before training
writes anything.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import threading

import numpy as np

from sfv_jax.data.clips import DataError, frame_indices, frame_step, resize_center_crop
from sfv_jax.video_io import probe_video, read_video_frames

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".gif", ".mov", ".mkv")


@dataclasses.dataclass(frozen=True)
class VideoFile:
    """A readable video: its path, frame count (an estimate for ffmpeg files) and frames per second."""

    path: str
    num_frames: int
    fps: float


def list_videos(root: str) -> list[str]:
    """Video files under root, recursively, sorted by path so every process sees the same order."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        found.extend(os.path.join(folder, f) for f in files
                     if os.path.splitext(f)[1].lower() in VIDEO_EXTENSIONS and not f.startswith("."))
    return sorted(found)


def probe(path: str) -> VideoFile:
    """Opens `path` and decodes its first frame; raises (any exception) if it is not a readable video."""
    return VideoFile(path, *probe_video(path))


def read_frames(video: VideoFile, indices: np.ndarray) -> list[np.ndarray]:
    """The frames at `indices` as uint8 (h, w, 3); past the true end, the last frame repeats."""
    return read_video_frames(video.path, indices)


class FolderVideos:
    """Readable videos under `root`; clip(i, rng) -> uint8 (num_frames, height, width, 3) sampled at `fps`."""

    def __init__(self, root: str, num_frames: int, height: int, width: int, fps: float | None = 7,
                 num_workers: int = 4):
        if not os.path.isdir(root):
            what = "is not a folder" if os.path.exists(root) else "does not exist"
            raise DataError(f"data.path={root} {what}; set --config.data.path to a folder of video files "
                            f"({', '.join(e[1:] for e in VIDEO_EXTENSIONS)})")
        paths = list_videos(root)
        if not paths:
            raise DataError(f"data.path={root} holds no video files; put videos with extension "
                            f"{', '.join(VIDEO_EXTENSIONS)} there (subfolders count) or point data.path elsewhere")
        self.root, self.num_frames, self.height, self.width, self.fps = root, num_frames, height, width, fps
        self._lock = threading.Lock()
        self._bad: set[int] = set()
        self.skipped = 0
        # PyAV releases the GIL while FFmpeg decodes, so threads probe in parallel.
        with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool:
            results = list(pool.map(_try_probe, paths))
        self.videos = []
        for path, result in zip(paths, results):
            if isinstance(result, VideoFile):
                self.videos.append(result)
            else:
                self._skip(path, result)
        if not self.videos:
            raise DataError(f"none of the {len(paths)} video files under data.path={root} could be read "
                            f"(first: {paths[0]}); check that they are valid videos, or point data.path elsewhere")
        log.info("data: %d readable videos under %s, skipped %d", len(self.videos), root, self.skipped)

    def __len__(self) -> int:
        return len(self.videos)

    def _skip(self, path: str, error: BaseException) -> None:
        with self._lock:
            self.skipped += 1
        log.warning("data: skipping unreadable video %s (%s: %s)", path, type(error).__name__,
                    str(error).strip().splitlines()[0][:200] if str(error).strip() else "")

    def clip(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """Video `index` -> uint8 (num_frames, height, width, 3); rng picks the start frame.

        A file that probed fine but fails to decode here is skipped (counted, logged once) and the next
        readable video stands in, so the batch keeps its shape and stays a deterministic function of index.
        """
        n = len(self.videos)
        # One draw from rng whatever happens below, so a stand-in video gets the same window whether the
        # broken one is found now or was already known (e.g. before a resume).
        key = int(rng.integers(2 ** 63))
        for k in range(n):
            i = (index + k) % n
            if i in self._bad:
                continue
            video = self.videos[i]
            indices = frame_indices(video.num_frames, self.num_frames, frame_step(video.fps, self.fps),
                                    np.random.default_rng(key))
            try:
                frames = read_frames(video, indices)
            except Exception as error:  # noqa: BLE001 - any decoder failure means "unreadable"
                with self._lock:
                    first = i not in self._bad
                    self._bad.add(i)
                if first:
                    self._skip(video.path, error)
                continue
            return np.stack([resize_center_crop(f, self.height, self.width) for f in frames])
        raise DataError(f"every video under data.path={self.root} failed to decode; check the files")


def _try_probe(path: str) -> VideoFile | BaseException:
    try:
        return probe(path)
    except Exception as error:  # noqa: BLE001 - any decoder failure means "unreadable"
        return error
