"""Training clips: synthetic moving shapes, a folder of video files, or a TFDS dataset.

`make_clip_iterator(config.data, global_batch_size, seed, process_index, process_count)` is the entry point;
see iterator.py for the stream's guarantees (per-process shards, exact resume). Pre-encoded latents written by
tools/encode_latents.py stream the same way through `make_latent_cache_iterator` (latent_cache.py).
"""

from sfv_jax.data.iterator import ClipIterator, RowOrder, make_clip_iterator
from sfv_jax.data.latent_cache import (LatentCacheIterator, check_cache_matches, make_latent_cache_iterator,
                                       read_cache_index)
from sfv_jax.data.sources import DataError, VideoSource, make_source
from sfv_jax.data.synthetic import Shape, SyntheticVideos

__all__ = ["ClipIterator", "DataError", "LatentCacheIterator", "RowOrder", "Shape", "SyntheticVideos", "VideoSource",
           "check_cache_matches", "make_clip_iterator", "make_latent_cache_iterator", "make_source", "read_cache_index"]
