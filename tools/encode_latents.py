r"""Encode a training config's dataset once into a latent cache (sfv_jax/data/latent_cache.py) that training reads
instead of running the frozen VAE and CLIP every step.

    python tools/encode_latents.py --config configs/sfv_svd.py --out /data/ucf101_latents \
        --config.data.source=tfds --config.data.tfds_name=ucf101 --config.init_checkpoint=/ckpt/svd_xt
    sfv-jax train --config configs/sfv_svd.py --workdir runs/sfv --config.data.latents=cache \
        --config.data.latent_cache=/data/ucf101_latents

The clips come from config.data's source (as make_clip_iterator builds it), the encoders from
config.init_checkpoint (random, seeded as training seeds them, when it is ""), the maths from
sfv_jax.train.encode.make_encode_fn. Row i of the cache is clip i of the source, in index order (not the
shuffled training order); the clip's temporal window and its conditioning-frame noise are fixed here, per clip
(see latent_cache.py). Batches are split over the local devices. The folder appears complete or not at all.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from sfv_jax.data.latent_cache import BATCH_KEYS, FIRST_FRAME, FORMAT, INDEX_NAME, NOISE_KEY  # noqa: E402
from sfv_jax.errors import SfvError  # noqa: E402

NOISE_SEED_OFFSET = 5  # noise keys come from PRNGKey(seed + 5): +3 and +4 are the train loop's encode and sample keys


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, metavar="FILE.py[:VARIANT]", help="the training config")
    parser.add_argument("--out", required=True, metavar="CACHE_DIR", help="the cache folder to write")
    parser.add_argument("--num-clips", type=int, default=None, help="encode clips 0..N-1 (default: all)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="clips per encoder call (default: config.global_batch_size; rounded up to the devices)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                        help="stored dtype of the arrays (float16 halves the disk; reads come back float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--num-workers", type=int, default=4, help="clip decoding threads")
    args, extra = parser.parse_known_args(argv)
    return args, extra


def encoder_weights(config, models):
    """The frozen {"vae", "image_encoder"} params training would start from (init_checkpoint's, or random seeded
    exactly as a training run seeds them), without loading the UNet."""
    from sfv_jax.train.objectives import make_objective
    del models
    weights, _, _ = make_objective(config).initial_weights(names=("vae", "image_encoder"))
    return weights


def make_row_encoder(config, models, num_devices: int):
    """jit(encoders, frames uint8 (B, T, H, W, 3), keys uint32 (B, 2)) -> {key: (B, ...)}, B split over devices.

    Each row is encoded as a batch of one with its own key (vmap), so row i's noise, and so the whole cache,
    does not depend on --batch-size or on which rows share a batch.
    """
    import jax
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

    from sfv_jax.train.encode import make_encode_fn
    encode = make_encode_fn(config, models)

    def rows(encoders, frames, keys):
        out = jax.vmap(lambda f, k: encode(encoders, f[None], k))(frames, keys)
        return {k: v[:, 0] for k, v in out.items()}

    mesh = jax.make_mesh((num_devices,), ("data",), axis_types=(AxisType.Auto,), devices=jax.local_devices())
    batch, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    return jax.jit(rows, in_shardings=(replicated, batch, batch), out_shardings=batch), replicated


def clip_batches(source, order, num_clips: int, batch_size: int, num_workers: int):
    """Yields (first index, uint8 (batch_size, T, H, W, 3)) of clips 0..num_clips-1 in order; the last batch is
    padded by repeating its last clip (one compiled shape). Decodes one batch ahead in threads."""
    def load(start):
        indices = [min(i, num_clips - 1) for i in range(start, start + batch_size)]
        return np.stack(list(pool.map(lambda i: source.clip(i, order.window_rng(i)), indices)))

    with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool, \
            concurrent.futures.ThreadPoolExecutor(1) as ahead:
        starts = list(range(0, num_clips, batch_size))
        pending = ahead.submit(load, starts[0])
        for k, start in enumerate(starts):
            frames = pending.result()
            if k + 1 < len(starts):
                pending = ahead.submit(load, starts[k + 1])
            yield start, frames


def encode_cache(config, out: str, num_clips: int | None = None, batch_size: int | None = None,
                 dtype: str = "float32", overwrite: bool = False, num_workers: int = 4) -> dict:
    """Writes the cache of config's dataset to `out` (see the module docstring); returns its cache.json."""
    from sfv_jax.data.iterator import RowOrder
    from sfv_jax.data.sources import DataError, make_source
    from sfv_jax.fileio import atomic_directory

    if os.path.exists(out) and not overwrite:  # before any slow work
        raise SfvError(f"{out} already exists; choose another --out, or pass --overwrite to replace it")
    if "vae" not in config or "image_encoder" not in config:
        raise SfvError("the config has no vae / image_encoder sections; use a training config "
                       "(e.g. configs/sfv_svd.py)")
    source = make_source(config.data)  # DataError on a bad source
    total = len(source)
    num_clips = total if num_clips is None else int(num_clips)
    if not 1 <= num_clips <= total:
        raise DataError(f"--num-clips {num_clips}: the dataset has {total} clips; choose 1..{total}")

    import jax
    from tqdm import tqdm

    from sfv_jax.train.state import SFVModels
    devices = jax.local_device_count()
    batch_size = int(batch_size or config.global_batch_size)
    if batch_size < 1:
        raise SfvError(f"--batch-size {batch_size} must be >= 1")
    batch_size = -(-batch_size // devices) * devices
    models = SFVModels(config, with_discriminator="disc" in config)  # a denoise config has no disc section
    encode, replicated = make_row_encoder(config, models, devices)
    encoders = jax.device_put(encoder_weights(config, models), replicated)
    order = RowOrder(total, 1, config.seed)  # window_rng(i): the window clip i would get at epoch 0, position i
    keys = np.asarray(jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(config.seed + NOISE_SEED_OFFSET), i))(
        np.arange(num_clips, dtype=np.uint32)))
    d = config.data
    frames_shape = jax.ShapeDtypeStruct((batch_size, d.num_frames, d.height, d.width, 3), np.uint8)
    shapes = jax.eval_shape(encode, encoders, frames_shape, jax.ShapeDtypeStruct((batch_size, 2), np.uint32))

    index = dict(format=FORMAT, num_clips=num_clips,
                 keys={**{k: dict(shape=[num_clips, *shapes[k].shape[1:]], dtype=dtype) for k in BATCH_KEYS},
                       FIRST_FRAME: dict(shape=[num_clips, d.height, d.width, 3], dtype="uint8")},
                 noise_key=dict(shape=list(keys.shape), dtype=str(keys.dtype), derivation=(
                     f"jax.random.fold_in(jax.random.PRNGKey(seed + {NOISE_SEED_OFFSET}), i)")),
                 clip_window="source.clip(i, numpy.random.default_rng([seed, 0, 1, i])): epoch 0's window for "
                             "position i",
                 noise="image_latent[i] = VAE mean of (first frame + sfv.noise_aug_strength * "
                       "jax.random.normal(noise_key[i], (1, H, W, 3)))",
                 first_frame="frame 0 of the clip's window, uint8, before any noise",
                 data=d.to_dict(), vae=config.vae.to_dict(), image_encoder=config.image_encoder.to_dict(),
                 sfv={k: config.sfv[k] for k in ("fps", "motion_bucket_id", "noise_aug_strength")},
                 init_checkpoint=config.init_checkpoint, seed=config.seed, model_dtype=config.model.dtype)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a cache is data others train from
        arrays = {k: np.lib.format.open_memmap(os.path.join(tmp, f"{k}.npy"), mode="w+", dtype=entry["dtype"],
                                               shape=tuple(entry["shape"])) for k, entry in index["keys"].items()}
        np.save(os.path.join(tmp, f"{NOISE_KEY}.npy"), keys)
        with tqdm(total=num_clips, unit="clip", desc="encoding", dynamic_ncols=True) as bar:
            for start, frames in clip_batches(source, order, num_clips, batch_size, num_workers):
                n = min(batch_size, num_clips - start)
                batch_keys = keys[np.minimum(np.arange(start, start + batch_size), num_clips - 1)]
                out_rows = jax.device_get(encode(encoders, frames, batch_keys))
                for k in BATCH_KEYS:
                    arrays[k][start:start + n] = out_rows[k][:n]
                arrays[FIRST_FRAME][start:start + n] = frames[:n, 0]
                bar.update(n)
        for array in arrays.values():
            array.flush()
        del arrays
        with open(os.path.join(tmp, INDEX_NAME), "w") as f:
            json.dump(index, f, indent=1, default=str)
    return index


def main(argv=None) -> int:
    from sfv_jax.config import load_config
    from sfv_jax.train_cli import split_overrides

    args, extra = parse_args(argv)
    try:
        config = load_config(args.config, split_overrides(extra))
        index = encode_cache(config, args.out, args.num_clips, args.batch_size, args.dtype, args.overwrite,
                             args.num_workers)
    except SfvError as e:
        print(f"encode_latents: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("encode_latents: interrupted; nothing was written", file=sys.stderr)
        return 130
    print(f"wrote {args.out}: {index['num_clips']} clips, latents {tuple(index['keys']['latents']['shape'][1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
