"""Video files in-process with PyAV (mp4) and Pillow (gif): round trips, frame selection, no forked process.

Bounds: GIF frames come back exactly (the test frames use few colours); H.264 at crf 18 with yuv420p chroma
subsampling on 8x8 colour blocks comes back within a mean absolute error of 8 / 255.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from sfv_jax.errors import SfvError
from sfv_jax.video_io import probe_video, read_all_frames, read_video_frames, write_video


def moving_blocks(num_frames: int = 9, height: int = 48, width: int = 80, seed: int = 0) -> np.ndarray:
    """uint8 (T, H, W, 3): a random grid of 8x8 colour blocks that shifts one block right per frame."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (height // 8, width // 8, 3)).astype(np.uint8)
    return np.stack([np.kron(np.roll(grid, t, axis=1), np.ones((8, 8, 1), np.uint8)) for t in range(num_frames)])


@pytest.mark.parametrize("ext, bound", [("gif", 0.0), ("mp4", 8.0)])
def test_write_then_read_back(ext, bound, tmp_path):
    """Catches: a writer that drops, reorders or resizes frames, a wrong frame rate, a reader that returns the
    wrong frames for chosen indices or fails to hold the last frame past the end."""
    frames = moving_blocks()
    path = str(tmp_path / f"clip.{ext}")
    write_video(frames, path, fps=7)
    count, fps = probe_video(path)
    assert count == len(frames) and fps == pytest.approx(7, rel=0.05)
    back = np.stack(read_all_frames(path)).astype(np.int64)
    assert back.shape == frames.shape
    assert np.abs(back - frames).mean() <= bound
    # Each frame is nearer its own source frame than its neighbours (the content moves a block per frame).
    errors = np.abs(back[:, None] - frames[None].astype(np.int64)).mean(axis=(2, 3, 4))
    assert (errors.argmin(axis=1) == np.arange(len(frames))).all()
    chosen = read_video_frames(path, [5, 1, 1, 8, 12])
    for got, want in zip(chosen, [5, 1, 1, 8, 8]):
        np.testing.assert_array_equal(got, back[want])


def test_mp4_is_written_in_process_without_the_fork_warning(tmp_path):
    """Catches: encoding through an ffmpeg subprocess (imageio-ffmpeg), which forks from the multithreaded JAX
    process and makes JAX warn that os.fork() "will likely lead to a deadlock"."""
    import jax.numpy as jnp
    jnp.zeros(3).block_until_ready()  # JAX's threads are running, so a fork would warn
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_video(moving_blocks(3), str(tmp_path / "clip.mp4"), fps=7)
        read_all_frames(str(tmp_path / "clip.mp4"))
    assert not [w for w in caught if "fork" in str(w.message)]


def test_odd_sizes_and_bad_frames_fail_without_writing(tmp_path):
    """Catches: an mp4 writer that silently rescales odd sizes, or half-written files on failure."""
    with pytest.raises(SfvError, match="even width and height"):
        write_video(moving_blocks()[:, :47], str(tmp_path / "odd.mp4"), fps=7)
    with pytest.raises(ValueError, match="uint8"):
        write_video(moving_blocks().astype(np.float32), str(tmp_path / "float.gif"), fps=7)
    assert list(tmp_path.iterdir()) == []
