"""Writing generated clips: GIF (Pillow), MP4 (imageio + imageio-ffmpeg), a PNG contact sheet. All atomic."""

from __future__ import annotations

import os
import tempfile

import numpy as np

from sfv_jax.errors import SfvError

VIDEO_EXTENSIONS = (".gif", ".mp4")


def check_video_path(path: str) -> str:
    """The lower-case extension of `path`, or SfvError naming the supported ones."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in VIDEO_EXTENSIONS:
        raise SfvError(f"{path}: unknown output extension {ext or '(none)'!r}; use .mp4 or .gif")
    return ext


def contact_sheet_path(path: str) -> str:
    """out.mp4 -> out.contact.png, the sheet written next to a video."""
    return os.path.splitext(path)[0] + ".contact.png"


def _atomic_write(path: str, write) -> None:
    """Calls write(tmp_path) on a temporary sibling with the same extension, then renames it to `path`."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    stem, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.tmp-", suffix=ext, dir=parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_video(frames: np.ndarray, path: str, fps: float) -> None:
    """frames (T, H, W, 3) uint8 -> path (.gif or .mp4) at `fps` frames per second."""
    ext = check_video_path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if ext == ".gif":
        def write(tmp):
            from PIL import Image
            images = [Image.fromarray(f) for f in frames]
            images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                           duration=max(int(round(1000 / fps)), 1), loop=0)
    else:
        def write(tmp):
            import imageio.v2 as imageio
            # macro_block_size=1... 8: keep the exact size (H, W are multiples of 8); yuv420p for players.
            with imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                    pixelformat="yuv420p", macro_block_size=8) as writer:
                for f in frames:
                    writer.append_data(f)
    _atomic_write(path, write)


def contact_sheet(frames: np.ndarray, columns: int | None = None) -> np.ndarray:
    """frames (T, H, W, 3) uint8 -> one (rows*H, columns*W, 3) image, frames left to right, top to bottom."""
    t, h, w, c = frames.shape
    columns = columns or min(t, 7)
    rows = -(-t // columns)
    sheet = np.zeros((rows * h, columns * w, c), np.uint8)
    for i, f in enumerate(frames):
        r, col = divmod(i, columns)
        sheet[r * h:(r + 1) * h, col * w:(col + 1) * w] = f
    return sheet


def write_contact_sheet(frames: np.ndarray, path: str) -> None:
    from PIL import Image
    _atomic_write(path, lambda tmp: Image.fromarray(contact_sheet(frames)).save(tmp, format="PNG"))
