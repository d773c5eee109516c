"""Video files in-process: GIF through Pillow, everything else through PyAV (FFmpeg's libraries, as torchvision).

Writing: generated clips as GIF or MP4 (H.264, yuv420p), and a PNG contact sheet, all atomic. Reading: a video's
frame count and rate (`probe_video`) and chosen frames (`read_video_frames`), for the data folder reader.
No subprocess is started: forking ffmpeg from the multithreaded JAX process is what JAX warns may deadlock.
"""

from __future__ import annotations

import fractions
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
        if frames.shape[1] % 2 or frames.shape[2] % 2:
            raise SfvError(f"{path}: mp4 (yuv420p) needs an even width and height, got "
                           f"{frames.shape[2]}x{frames.shape[1]}; write a .gif or crop a pixel")
        write = lambda tmp: _write_mp4(frames, tmp, fps)
    _atomic_write(path, write)


# Constant quality for libx264 (0 lossless ... 51): 18 is visually lossless for generated clips.
MP4_CRF = 18
_DEFAULT_GIF_FPS = 10.0  # GIFs without a frame duration play at about this speed in browsers


def _write_mp4(frames: np.ndarray, path: str, fps: float) -> None:
    import av
    with av.open(path, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fractions.Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"  # what every player decodes
        stream.options = {"crf": str(MP4_CRF)}
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        container.mux(stream.encode())  # flush the encoder's delayed frames


def probe_video(path: str) -> tuple[int, float]:
    """(frame count, frames per second) of a video file, decoding its first frame; raises if unreadable.

    Containers other than GIF may store no frame count: then it is duration * fps, an estimate that can
    overshoot by a frame or two (read_video_frames holds the last frame). fps is 0.0 when the file has none.
    """
    if path.lower().endswith(".gif"):
        from PIL import Image
        with Image.open(path) as image:
            n = int(getattr(image, "n_frames", 1))
            duration_ms = image.info.get("duration") or 0
            np.asarray(image.convert("RGB"))
        return n, 1000.0 / duration_ms if duration_ms > 0 else _DEFAULT_GIF_FPS
    import av
    with av.open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        next(container.decode(stream))
        n = int(stream.frames or 0)
        if n <= 0:
            seconds = float(stream.duration * stream.time_base) if stream.duration else container.duration / 1e6 \
                if container.duration else 0.0
            n = int(seconds * fps)
    return max(n, 1), fps


def read_video_frames(path: str, indices) -> list[np.ndarray]:
    """The frames at `indices` (any order, repeats allowed) as uint8 (h, w, 3); past the true end the last
    decoded frame repeats. Decodes from the start up to the largest index."""
    wanted = [int(i) for i in indices]
    if path.lower().endswith(".gif"):
        from PIL import Image
        frames = []
        with Image.open(path) as image:
            for i in wanted:
                image.seek(min(i, int(getattr(image, "n_frames", 1)) - 1))
                frames.append(np.asarray(image.convert("RGB")))
        return frames
    import av
    decoded: dict[int, np.ndarray] = {}
    needed, top, last = set(wanted), max(wanted), None
    with av.open(path) as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if i > top:
                break
            last = frame
            if i in needed:
                decoded[i] = frame.to_ndarray(format="rgb24")
        if last is None:
            raise ValueError(f"{path}: no video frame could be decoded")
        held = last.to_ndarray(format="rgb24")  # indices past the true end (all above the last decoded one)
    return [decoded.get(i, held) for i in wanted]


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


def read_all_frames(path: str) -> list[np.ndarray]:
    """Every frame of a video file, uint8 (h, w, 3) (decoded to the end: an mp4's stored count may be missing)."""
    if path.lower().endswith(".gif"):
        return read_video_frames(path, range(probe_video(path)[0]))  # Pillow knows a GIF's exact frame count
    import av
    with av.open(path) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
