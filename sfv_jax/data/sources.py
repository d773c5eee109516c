"""The factory that picks a clip source from the config (the sources' shared interface is sfv_jax.data.clips)."""

from __future__ import annotations

import os

from sfv_jax.data.clips import DataError, VideoSource, frame_indices, frame_step, resize_center_crop

__all__ = ["SOURCES", "DataError", "VideoSource", "frame_indices", "frame_step", "make_source", "resize_center_crop"]

SOURCES = ("synthetic", "folder", "tfds")


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
