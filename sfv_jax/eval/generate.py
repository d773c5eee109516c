"""`sfv-jax eval generate`: the paper's protocol for the fake set. The first frame of each real clip conditions
one generated clip; clips are written as videos in a folder (or one .npz) that `sfv-jax eval fvd` reads.

Generation is batched and sharded: every call of the pipeline gets `--batch-size` images (a short last batch is
padded by repeating its last image, the extra clips dropped), split over `--devices` devices (default: all of this
process's; the batch size is rounded up to a multiple of them), so each stage compiles once, to one SPMD program.
Batch k uses seed `--seed + k`, so a run is reproducible for a given batch size, on any number of devices.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from sfv_jax.errors import SfvError


def add_generate_parser(commands) -> None:
    from sfv_jax.eval.args import SRC_HELP

    p = commands.add_parser("generate", help="one generated clip per real clip, conditioned on its first frame")
    p.add_argument("--checkpoint", required=True, metavar="CKPT_OR_WORKDIR",
                   help="an sfv-jax pipeline checkpoint, or a training workdir (its latest EMA generator)")
    p.add_argument("--images", required=True, metavar="SRC", help=f"the real clips whose first frames condition: "
                                                                   f"{SRC_HELP}")
    p.add_argument("--out", required=True, metavar="DIR_OR_NPZ",
                   help="a new folder of .mp4 clips (00000.mp4, ...), or FILE.npz holding uint8 (N, T, H, W, 3)")
    p.add_argument("--steps", type=int, default=1, help="sampler steps (1: SF-V; more: SVD's Euler sampler)")
    p.add_argument("--num-frames", type=int, default=None, help="frames per clip (default: the UNet's)")
    p.add_argument("--height", type=int, default=None,
                   help="clip height (default: the real frames'; a multiple of the VAE's downsampling, 8 for SVD)")
    p.add_argument("--width", type=int, default=None,
                   help="clip width (default: the real frames'; a multiple of the VAE's downsampling, 8 for SVD)")
    p.add_argument("--batch-size", type=int, default=4,
                   help="clips per pipeline call (rounded up to a multiple of --devices)")
    p.add_argument("--devices", type=int, default=None, metavar="N",
                   help="split each batch over this process's first N devices (default: all of them)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N real clips")
    p.add_argument("--fps", type=int, default=7, help="SVD's fps conditioning, and the written videos' frame rate")
    p.add_argument("--motion-bucket-id", type=int, default=127)
    p.add_argument("--noise-aug-strength", type=float, default=0.02)
    p.add_argument("--min-guidance", type=float, default=1.0)
    p.add_argument("--max-guidance", type=float, default=3.0)
    p.add_argument("--decode-chunk-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tfds-data-dir", default=None, metavar="DIR", help="where tfds: sets are prepared")
    p.set_defaults(run=run_generate)


def first_frames(src: str, limit: int | None, tfds_data_dir: str | None = None) -> np.ndarray:
    """uint8 (N, H, W, 3): the first frame of each clip of SRC (all of one size, else VideoSetError)."""
    from sfv_jax.eval.video_sets import VideoSetError, batches, open_video_set

    frames = [batch[:, 0] for batch in batches(open_video_set(src, 1, tfds_data_dir), 64, limit)]
    if not frames:
        raise VideoSetError(f"{src}: holds no clips")
    return np.concatenate(frames)


def generate_clips(pipe, images: np.ndarray, batch_size: int, seed: int = 0, progress=None, **call_kwargs):
    """Yields uint8 clips (T, H, W, 3), one per image of `images` (N, h, w, 3), in order. call_kwargs go to the
    pipeline (num_frames, height, width, num_inference_steps, ...)."""
    import PIL.Image

    batch_size = max(1, int(batch_size))
    for k, start in enumerate(range(0, len(images), batch_size)):
        chunk = list(images[start:start + batch_size])
        real = len(chunk)
        chunk += [chunk[-1]] * (batch_size - real)  # one compiled program for every batch
        clips = pipe([PIL.Image.fromarray(i) for i in chunk], seed=seed + k, output_type="uint8", **call_kwargs)
        for clip in clips[:real]:
            yield clip
        if progress is not None:
            progress(real)


def generation_devices(count: int | None) -> list:
    """This process's first `count` devices (all of them for None)."""
    import jax

    devices = jax.local_devices()
    if count is None:
        return devices
    if not 1 <= count <= len(devices):
        raise SfvError(f"--devices {count}: this process has {len(devices)} device(s); pass 1 to {len(devices)}")
    return devices[:count]


def run_generate(args) -> None:
    from tqdm import tqdm

    from sfv_jax.fileio import atomic_directory, refuse_existing, write_file_atomically
    from sfv_jax.pipeline import SFVPipeline
    from sfv_jax.video_io import write_video

    to_npz = args.out.lower().endswith(".npz")
    refuse_existing(args.out)
    if args.steps < 1 or args.batch_size < 1:
        raise SfvError(f"--steps and --batch-size must be >= 1, got {args.steps} and {args.batch_size}")
    devices = generation_devices(args.devices)
    batch_size = -(-args.batch_size // len(devices)) * len(devices)
    images = first_frames(args.images, args.limit, args.tfds_data_dir)
    height = args.height or images.shape[1]
    width = args.width or images.shape[2]
    pipe = SFVPipeline.from_pretrained(args.checkpoint).shard_batch(devices)
    call = dict(num_frames=args.num_frames, height=height, width=width, num_inference_steps=args.steps,
                fps=args.fps, motion_bucket_id=args.motion_bucket_id, noise_aug_strength=args.noise_aug_strength,
                min_guidance_scale=args.min_guidance, max_guidance_scale=args.max_guidance,
                decode_chunk_size=args.decode_chunk_size)
    with tqdm(total=len(images), desc="generate", unit="clip", disable=not sys.stderr.isatty()) as bar:
        clips = generate_clips(pipe, images, batch_size, args.seed, bar.update, **call)
        if to_npz:
            array = np.stack(list(clips))
            write_file_atomically(args.out, lambda tmp: np.savez(tmp, videos=array))
            shape = array.shape
        else:
            with atomic_directory(args.out) as tmp:
                for i, clip in enumerate(clips):
                    write_video(clip, os.path.join(tmp, f"{i:05d}.mp4"), fps=args.fps)
                    shape = (i + 1, *clip.shape)
    print(f"wrote {args.out}: {shape[0]} clips of {shape[1]} frames {shape[3]}x{shape[2]}, {args.steps} step"
          f"{'s' if args.steps > 1 else ''}")
