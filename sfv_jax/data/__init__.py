"""Training clips: synthetic moving shapes, a folder of video files, or a TFDS dataset.

`make_clip_iterator(config.data, global_batch_size, seed, process_index, process_count)` is the entry point;
see iterator.py for the stream's guarantees (per-process shards, exact resume).
"""

from sfv_jax.data.iterator import ClipIterator, make_clip_iterator
from sfv_jax.data.sources import DataError, VideoSource, make_source
from sfv_jax.data.synthetic import Shape, SyntheticVideos

__all__ = ["ClipIterator", "DataError", "Shape", "SyntheticVideos", "VideoSource", "make_clip_iterator",
           "make_source"]
