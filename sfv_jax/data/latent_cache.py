"""Pre-encoded training batches: a folder written once by tools/encode_latents.py, streamed like the clips.

Encoding every clip with the frozen VAE and CLIP on every step costs more than the step's UNet passes at small
batch sizes; a cache pays that once. A cache folder holds one .npy per batch key, rows in the dataset's index
order (row i is clip i of the source), plus cache.json:

  latents        (N, T, h, w, 4)  VAE latent means of every frame times data.latent_scale
  image_latent   (N, h, w, 4)     VAE mean of the noise-augmented first frame, unscaled
  clip           (N, 1, D)        CLIP image embedding of the clean first frame
  added_time_ids (N, 3)           (fps - 1, motion_bucket_id, noise_aug_strength)
  noise_key      (N, 2) uint32    the PRNG key of clip i's conditioning-frame noise (provenance, never streamed)
  first_frame    (N, H, W, 3) uint8  the clean first frame, streamed on request (with_first_frame): objectives
                                  that draw their conditioning noise every step (denoise) re-encode it
                                  (sfv_jax.train.encode.make_recondition_fn); caches written before it lack it

What on-the-fly encoding draws afresh each time a clip is seen is fixed per clip when the cache is written:
the temporal window (the one epoch 0 would give the clip at position i) and, in image_latent, the conditioning
frame's noise (key noise_key[i]). The SF-V objective reads image_latent, so every epoch sees the same
conditioning noise for a clip; at SVD's noise_aug_strength of 0.02 that is a small loss of augmentation, traded
for a step that runs no encoder. The denoise objective draws a noise strength per clip and step (it must learn
every strength a user may sample with), so it re-encodes first_frame instead: one frame of the VAE, not T.

LatentCacheIterator streams rows exactly as ClipIterator streams clips (same RowOrder: per-epoch permutations
of (seed, epoch), per-process rows, get_state/set_state), reading them from memory-mapped files.
"""

from __future__ import annotations

import json
import logging
import math
import os

import numpy as np

from sfv_jax.data.iterator import RowStream
from sfv_jax.data.clips import DataError

log = logging.getLogger(__name__)

FORMAT = "sfv-jax-latent-cache/1"
INDEX_NAME = "cache.json"
BATCH_KEYS = ("latents", "image_latent", "clip", "added_time_ids")
NOISE_KEY = "noise_key"
FIRST_FRAME = "first_frame"
_FIX = "re-encode it with python tools/encode_latents.py --config ... --out DIR"


def read_cache_index(path: str) -> dict:
    """cache.json of the cache at `path`, after checking that every array file is there with its recorded shape.

    Raises DataError (one line, with the fix) if the folder, the index or an array is missing or corrupt.
    """
    index_path = os.path.join(path, INDEX_NAME)
    if not os.path.isfile(index_path):
        what = "does not exist" if not os.path.exists(path) else f"has no {INDEX_NAME}"
        raise DataError(f"latent cache {path} {what}; write one with python tools/encode_latents.py "
                        f"--config ... --out {path}")
    try:
        with open(index_path) as f:
            index = json.load(f)
        if index.get("format") != FORMAT:
            raise ValueError(f"format {index.get('format')!r} is not {FORMAT!r}")
        num = int(index["num_clips"])
        for key in (*BATCH_KEYS, *([FIRST_FRAME] if FIRST_FRAME in index["keys"] else [])):
            shape, dtype = tuple(index["keys"][key]["shape"]), np.dtype(index["keys"][key]["dtype"])
            if shape[:1] != (num,):
                raise ValueError(f"{key} has {shape[:1]} rows, num_clips is {num}")
            array = np.load(os.path.join(path, f"{key}.npy"), mmap_mode="r")  # reads the header, maps the data
            if array.shape != shape or array.dtype != dtype:
                raise ValueError(f"{key}.npy is {array.dtype}{array.shape}, cache.json says {dtype}{shape}")
    except (OSError, ValueError, KeyError, TypeError) as e:  # a truncated .npy fails to map with ValueError
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(f"latent cache {path} is corrupt ({type(e).__name__}: {detail}); {_FIX}") from None
    return index


def latent_downsampling(config) -> int:
    """How many image pixels one latent spans per side: 2 ** (VAE blocks - 1), SVD's 8 without a vae section."""
    if "vae" in config:
        # models.vae.downsampling_factor's formula: the data package does not import models (docs/architecture.md)
        return 2 ** (len(config.vae.block_out_channels) - 1)
    return 8


def check_cache_matches(path: str, config) -> dict:
    """Raises DataError unless the cache at `path` fits config's data (num_frames, height, width, latent_scale)
    and UNet (cross_attention_dim, in_channels); returns its cache.json.

    Differences that do not change shapes but change the conditioning (sfv.fps, motion_bucket_id,
    noise_aug_strength) are logged as warnings: the cache's values are what training sees.
    """
    index = read_cache_index(path)
    keys = {k: tuple(v["shape"]) for k, v in index["keys"].items()}
    data, f = config.data, latent_downsampling(config)
    t, h, w = int(data.num_frames), int(data.height) // f, int(data.width) // f
    latent, image, clip = keys["latents"][1:], keys["image_latent"][1:], keys["clip"][1:]
    problems = []
    if latent[:3] != (t, h, w) or image[:2] != (h, w):
        problems.append(f"latents are (T, h, w) = {latent[:3]}, config.data (num_frames {t}, height {data.height}, "
                        f"width {data.width}) needs {(t, h, w)}")
    if latent[-1] + image[-1] != int(config.unet.in_channels):
        problems.append(f"latent channels {latent[-1]} + {image[-1]} != unet.in_channels {config.unet.in_channels}")
    if clip != (1, int(config.unet.cross_attention_dim)):
        problems.append(f"clip embeddings are {clip}, unet.cross_attention_dim needs (1, "
                        f"{config.unet.cross_attention_dim})")
    if FIRST_FRAME in keys and keys[FIRST_FRAME][1:] != (int(data.height), int(data.width), 3):
        problems.append(f"first frames are {keys[FIRST_FRAME][1:]}, config.data needs "
                        f"{(int(data.height), int(data.width), 3)}")
    if keys["added_time_ids"][1:] != (3,):
        problems.append(f"added_time_ids are {keys['added_time_ids'][1:]}, not (3,)")
    cached_scale = index.get("data", {}).get("latent_scale")
    if cached_scale is not None and not math.isclose(float(cached_scale), float(data.latent_scale)):
        problems.append(f"latents were scaled by {cached_scale}, config.data.latent_scale is {data.latent_scale}")
    if problems:
        raise DataError(f"latent cache {path} does not fit the config: {'; '.join(problems)}; {_FIX} using this "
                        f"config, or train with the config it was written with")
    sfv = config.get("sfv") if hasattr(config, "get") else None
    for name, cached in (index.get("sfv") or {}).items():
        if sfv is not None and name in sfv and not math.isclose(float(sfv[name]), float(cached)):
            log.warning("latent cache %s was written with sfv.%s=%s, the config has %s: training uses the cache's",
                        path, name, cached, sfv[name])
    return index


class LatentCacheIterator(RowStream):
    """next(it) -> this process's rows of the next global batch, as float32 numpy arrays:
    {"latents" (b, T, h, w, 4), "image_latent" (b, h, w, 4), "clip" (b, 1, D), "added_time_ids" (b, 3)},
    and with_first_frame also "first_frame" (b, H, W, 3) uint8; b = global_batch_size // process_count. Same
    stream semantics as ClipIterator (see iterator.py).
    """

    def __init__(self, path: str, global_batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1, with_first_frame: bool = False):
        self.path = path
        self.index = read_cache_index(path)
        if with_first_frame and FIRST_FRAME not in self.index["keys"]:
            raise DataError(f"latent cache {path} holds no first frames (written before they were cached), and "
                            f"this objective re-encodes them every step; {_FIX}")
        self.keys = (*BATCH_KEYS, FIRST_FRAME) if with_first_frame else BATCH_KEYS
        super().__init__(int(self.index["num_clips"]), global_batch_size, seed, process_index, process_count)
        self._arrays: dict[str, np.ndarray] | None = None

    skipped = 0  # the cache was written from readable clips only

    def _maps(self) -> dict[str, np.ndarray]:
        if self._arrays is None:  # (re)opened lazily, so next() after close() still works
            self._arrays = {k: np.load(os.path.join(self.path, f"{k}.npy"), mmap_mode="r") for k in self.keys}
        return self._arrays

    @staticmethod
    def dtype(key: str) -> np.dtype:
        """What next() gives for `key`: uint8 frames, float32 everything else."""
        return np.dtype(np.uint8 if key == FIRST_FRAME else np.float32)

    def global_batch_shapes(self) -> dict[str, tuple[int, ...]]:
        """{key: (global_batch_size, ...)}: the global batch's shapes (dtypes: `dtype`), for the abstract batch."""
        return {k: (self.global_batch_size, *self.index["keys"][k]["shape"][1:]) for k in self.keys}

    def __next__(self) -> dict[str, np.ndarray]:
        indices = np.asarray([index for _, index in self.order.local_rows(self.order.row)])
        # Read in ascending file order (page cache friendly), then put the rows back in stream order.
        ascending, where = np.unique(indices, return_inverse=True)
        batch = {k: np.asarray(a[ascending], self.dtype(k))[where] for k, a in self._maps().items()}
        self.order.row += self.global_batch_size
        return batch

    def close(self) -> None:
        """Drops the memory maps (their files close once no batch refers to them)."""
        self._arrays = None



def make_latent_cache_iterator(config, global_batch_size: int, seed: int, process_index: int = 0,
                               process_count: int = 1, with_first_frame: bool = False) -> LatentCacheIterator:
    """The cache iterator for config.data.latent_cache, after check_cache_matches (DataError on a misfit)."""
    path = os.path.expanduser(str(config.data.get("latent_cache") or ""))
    if not path:
        raise DataError("data.latents='cache' needs data.latent_cache; set --config.data.latent_cache=DIR (written "
                        "by python tools/encode_latents.py)")
    check_cache_matches(path, config)
    return LatentCacheIterator(path, global_batch_size, seed, process_index, process_count, with_first_frame)
