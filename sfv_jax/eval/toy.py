"""`sfv-jax eval toy`: one checkpoint's scores on the built-in synthetic data (the toy reproduction's table).

K held-out synthetic clips (seed `HELDOUT_SYNTHETIC_SEED_OFFSET + --seed`: a stream the toy runs never train on;
--seed 0 starts with the clips a run's periodic eval_loss uses) -> their first frames condition one generated clip
each (the checkpoint, --steps, --sampler, batched and sharded as `eval generate`) -> FVD between the generated and
the held-out clips under the I3D protocol, and the motion report of the generated clips against the held-out ones.

I3D needs clips of 9 frames or more; shorter clips (the toy stack's 8) are stretched in time by repeating every
frame r = ceil(9 / T) times, both sets alike, so FVD still compares the two distributions, on features of the
stretched clips [ours]; r is in the output (`i3d_frame_repeat`). The held-out set's I3D statistics depend only on
(K, seed, clip shape) and can be kept with `--real-stats F.npz` for the next row of a table.

Prints one JSON object (and writes it with --json): fvd, motion_coherent_share, speed_distance (1-D Wasserstein
distance between speed distributions, px/frame), seconds_per_clip and unet_seconds_per_clip (generation after
compiling, per clip), with the settings and both sets' details.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np

from sfv_jax.errors import SfvError

# I3D's temporal pooling needs at least this many frames (eval/protocol.py).
I3D_MIN_FRAMES = 9


def add_toy_parser(commands) -> None:
    p = commands.add_parser("toy", help="FVD and motion report of a checkpoint on held-out synthetic clips")
    p.add_argument("--checkpoint", required=True, metavar="CKPT_OR_WORKDIR",
                   help="an sfv-jax pipeline checkpoint, or a training workdir (its latest EMA generator)")
    p.add_argument("--steps", type=int, default=1, help="sampler steps (1: one forward pass)")
    p.add_argument("--sampler", choices=("euler", "sfv"), default="euler",
                   help="euler: SVD's sampler with classifier-free guidance above one step; sfv: SF-V's refinement")
    p.add_argument("--num-clips", type=int, default=256, metavar="K", help="held-out clips (and generated ones)")
    p.add_argument("--seed", type=int, default=0, help="picks the held-out clips and the generation noise")
    p.add_argument("--num-frames", type=int, default=None, help="frames per clip (default: the UNet's)")
    p.add_argument("--height", type=int, default=None, help="default: the UNet's sample size x the VAE's factor")
    p.add_argument("--width", type=int, default=None, help="default: as --height")
    p.add_argument("--batch-size", type=int, default=8, help="clips per pipeline and I3D call")
    p.add_argument("--devices", type=int, default=None, metavar="N", help="split each batch over N devices")
    p.add_argument("--min-guidance", type=float, default=1.0)
    p.add_argument("--max-guidance", type=float, default=3.0)
    p.add_argument("--real-stats", metavar="F.npz", help="the held-out set's I3D statistics: reused if F.npz "
                                                         "exists (made under the same settings), else saved there")
    p.add_argument("--i3d-weights", metavar="FILE", default=None, help="I3D safetensors (default: the cache)")
    p.add_argument("--json", metavar="F", help="also write the result to F")
    p.set_defaults(run=run_toy)


def heldout_synthetic(num_clips: int, num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """uint8 (K, T, H, W, 3): whole synthetic videos of the held-out stream (never the training clips)."""
    from sfv_jax.data.heldout import HELDOUT_SYNTHETIC_SEED_OFFSET
    from sfv_jax.data.synthetic import SyntheticVideos

    videos = SyntheticVideos(num_clips, num_frames, height, width, seed=HELDOUT_SYNTHETIC_SEED_OFFSET + seed)
    return np.stack([videos.video(i) for i in range(num_clips)])


def i3d_frame_repeat(num_frames: int) -> int:
    """How many times each frame is repeated so that a clip of `num_frames` frames reaches I3D's minimum."""
    return max(1, math.ceil(I3D_MIN_FRAMES / num_frames))


def _check(args) -> None:
    if args.steps < 1 or args.num_clips < 2 or args.batch_size < 1:
        raise SfvError(f"--steps >= 1, --num-clips >= 2 (a covariance) and --batch-size >= 1 are needed, got "
                       f"{args.steps}, {args.num_clips}, {args.batch_size}")
    if args.sampler == "sfv" and not 1 <= args.steps <= 3:
        raise SfvError(f"--sampler sfv runs 1 to 3 steps, got --steps {args.steps}")
    for path, what in ((args.json, "--json"), (args.real_stats, "--real-stats")):
        if path and os.path.isdir(path):
            raise SfvError(f"{what} {path} is a folder; give a file name")
    if args.real_stats and not args.real_stats.endswith(".npz"):
        raise SfvError(f"--real-stats {args.real_stats}: statistics files end in .npz")


def generate_timed(pipe, images: np.ndarray, batch_size: int, seed: int, **call) -> tuple[np.ndarray, dict]:
    """Clips uint8 (N, T, H, W, 3) for `images` (N, h, w, 3), and per-clip seconds measured after compiling: the
    first batch is run once beforehand, so every timed call reuses compiled programs."""
    from tqdm import tqdm

    from sfv_jax.eval.generate import generate_clips

    list(generate_clips(pipe, images[:batch_size], batch_size, seed, **call))  # compiles every stage
    unet_seconds = []

    def after_batch(count):
        bar.update(count)
        unet_seconds.append(pipe.last_timings["unet"]["run_s"])

    start = time.perf_counter()
    with tqdm(total=len(images), desc="generate", unit="clip", disable=not sys.stderr.isatty()) as bar:
        clips = np.stack(list(generate_clips(pipe, images, batch_size, seed, after_batch, **call)))
    total = time.perf_counter() - start
    return clips, {"seconds_per_clip": total / len(images), "unet_seconds_per_clip": sum(unet_seconds) / len(images)}


def saved_real_stats(path: str | None, protocol: dict):
    """The held-out set's statistics saved at `path` under `protocol` (StatsError under another), or None."""
    from sfv_jax.eval.fvd import SetStats
    from sfv_jax.eval.stats import covariance_rank, load_stats

    if not path or not os.path.isfile(path):
        return None
    mean, cov, count, shape = load_stats(path, protocol)
    return SetStats(mean, cov, count, covariance_rank(cov), path, shape)


def toy_protocol(num_frames: int, height: int, width: int, num_clips: int, seed: int) -> dict:
    """The FVD protocol of a toy score, with what the held-out set's statistics depend on (saved beside them)."""
    from sfv_jax.eval.fvd import protocol as fvd_protocol

    repeat = i3d_frame_repeat(num_frames)
    return {**fvd_protocol(num_frames * repeat), "frame_repeat": repeat, "heldout_seed": seed,
            "heldout_clips": num_clips, "clip_shape": f"{num_frames}x{height}x{width}"}


def score_toy(pipe, extractor, *, steps: int, sampler: str, num_clips: int, seed: int, batch_size: int,
              num_frames: int, height: int, width: int, min_guidance: float = 1.0, max_guidance: float = 3.0,
              real_stats=None, save_real_stats: str | None = None) -> dict:
    """One pipeline's toy scores: `num_clips` held-out clips (stream `seed`) -> a generated clip from each first
    frame -> FVD (I3D features from `extractor`, an I3DFeatures) and the motion report against the held-out clips.

    real_stats: the held-out set's statistics if already known (saved_real_stats), else computed here and, with
    save_real_stats, saved there. Returns the JSON keys of `sfv-jax eval toy` but the checkpoint's.
    """
    import warnings

    from sfv_jax.eval.fvd import set_stats
    from sfv_jax.eval.motion import motion_report
    from sfv_jax.eval.stats import frechet_distance, save_stats
    from sfv_jax.eval.video_sets import MemorySet

    repeat = i3d_frame_repeat(num_frames)
    real = heldout_synthetic(num_clips, num_frames, height, width, seed)
    call = dict(num_frames=num_frames, height=height, width=width, num_inference_steps=steps, sampler=sampler,
                min_guidance_scale=min_guidance, max_guidance_scale=max_guidance)
    fake, timings = generate_timed(pipe, real[:, 0], batch_size, seed, **call)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if real_stats is None:
            real_stats = set_stats(MemorySet(np.repeat(real, repeat, axis=1), "held-out synthetic"), extractor,
                                   "I3D held-out")
            if save_real_stats:
                save_stats(save_real_stats, real_stats.mean, real_stats.cov, real_stats.count,
                           toy_protocol(num_frames, height, width, num_clips, seed), real_stats.clip_shape)
        fake_stats = set_stats(MemorySet(np.repeat(fake, repeat, axis=1), "generated"), extractor, "I3D generated")
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    motion = motion_report(fake, real)
    return {
        "fvd": frechet_distance(real_stats.mean, real_stats.cov, fake_stats.mean, fake_stats.cov),
        "motion_coherent_share": motion["coherent_share"],
        "speed_distance": motion["speed_wasserstein_px_per_frame"],
        **timings,
        "steps": steps, "sampler": sampler, "seed": seed, "num_clips": num_clips, "batch_size": batch_size,
        "guidance": [min_guidance, max_guidance],
        "clip_shape": [num_frames, height, width, 3], "i3d_frame_repeat": repeat,
        "real_motion_coherent_share": motion["real"]["coherent_share"],
        "fvd_sets": {"real": real_stats.summary(), "fake": fake_stats.summary()},
        "motion": {k: v for k, v in motion.items() if k != "real"},
    }


def run_toy(args) -> None:
    from sfv_jax.checkpoint import fingerprint
    from sfv_jax.eval.generate import generation_devices
    from sfv_jax.eval.protocol import I3DFeatures
    from sfv_jax.pipeline import SFVPipeline

    _check(args)
    devices = generation_devices(args.devices)
    batch_size = -(-args.batch_size // len(devices)) * len(devices)
    weights_id = fingerprint(args.checkpoint)  # before loading: a workdir may checkpoint again meanwhile
    pipe = SFVPipeline.from_pretrained(args.checkpoint).shard_batch(devices)
    num_frames = args.num_frames or pipe.unet.config.num_frames
    height = args.height or pipe.unet.config.sample_size * pipe.vae_scale_factor
    width = args.width or height
    # Before minutes of generation: saved statistics made under other settings are an error.
    real_stats = saved_real_stats(args.real_stats, toy_protocol(num_frames, height, width, args.num_clips, args.seed))
    extractor = I3DFeatures(batch_size=batch_size, devices=devices, weights=args.i3d_weights)
    scores = score_toy(pipe, extractor, steps=args.steps, sampler=args.sampler, num_clips=args.num_clips,
                       seed=args.seed, batch_size=batch_size, num_frames=num_frames, height=height, width=width,
                       min_guidance=args.min_guidance, max_guidance=args.max_guidance, real_stats=real_stats,
                       save_real_stats=args.real_stats)
    result = {**scores, "checkpoint": args.checkpoint, "checkpoint_fingerprint": weights_id}
    text = json.dumps(result, indent=2)
    if args.json:
        from sfv_jax.fileio import write_text_atomically

        write_text_atomically(args.json, text + "\n")
    print(text)
