"""What FVD rewards at toy scale: the toy table's FVD of real clips with one property taken away.

The toy table's goal 2 (the teacher at 1 step at least 2x worse than the student on FVD) is missed because the
teacher's one-step clips, which the motion report finds almost empty of shapes, get the table's best FVD. This
probe asks whether the metric itself ranks "no shapes" above "shapes that move": it scores, under exactly the
table's protocol (the same held-out statistics, I3D on frames upsampled to 224 and repeated in time), sets made
from clips of another held-out stream (never trained on, not the table's clips) with one change each:

  real        the clips unchanged (the floor: FVD between two samples of the data)
  faded       every shape blended 50% into the background (what the teacher's one-step clips look like)
  no_shapes   the background alone, static (shapes gone altogether)
  frozen      the first frame repeated (shapes kept, no motion)
  shuffled    the frames in a random order (shapes kept, motion incoherent)
  blurred     each frame blurred (Gaussian, sigma 1.5 px at 64x64; shapes and motion kept, detail lost)
  jittered    every shape drawn sharp but off its path by a random offset per frame (sigma 2 px per axis,
              about the 25-step teacher's median centroid error)
  resized     every shape drawn sharp on its path at a random size per frame (x0.6 to x1.4)
  vae         the clips encoded and decoded by the toy VAE (--vae-checkpoint; posterior means): every generated
              clip is a VAE decoding, so this is the FVD a perfect latent model would score

With --json, results already in that file for the same settings are kept, so variants can be run in parts.

It prints a markdown table of FVD and the motion report's coherent share per set, and writes it as JSON.

    python tools/toy_fvd_probe.py --real-stats benchmarks/toy_table/real_stats.npz --num-clips 128 \
        --json benchmarks/toy_table/fvd_probe.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import numpy as np

from sfv_jax.data.heldout import HELDOUT_SYNTHETIC_SEED_OFFSET
from sfv_jax.data.synthetic import SyntheticVideos

VARIANTS = ("real", "faded", "no_shapes", "frozen", "shuffled", "blurred", "jittered", "resized", "vae")


def gaussian_blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """uint8 (..., H, W, 3) blurred separably along H and W (edges replicated)."""
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = frames.astype(np.float32)
    for axis in (-3, -2):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(k, k + n), axis=axis) for k, w in enumerate(taps))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def redrawn(source: SyntheticVideos, index: int, rng: np.random.Generator, jitter_px: float = 0.0,
            size_range: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """uint8 (T, H, W, 3): video `index` drawn again with each shape, in each frame, moved by a Gaussian offset of
    `jitter_px` per axis and scaled by a factor drawn uniformly from `size_range` (clipped to stay in the frame)."""
    import dataclasses

    from sfv_jax.data.synthetic import draw_shape

    background = source.background(index)
    frames = np.repeat(background[None], source.num_frames, axis=0)
    for t in range(source.num_frames):
        for shape in source.motion(index):
            cx, cy = shape.centre(t)
            size = shape.size * rng.uniform(*size_range)
            dx, dy = rng.normal(0.0, jitter_px, size=2) if jitter_px else (0.0, 0.0)
            x = float(np.clip(cx + dx, size, source.width - 1 - size))
            y = float(np.clip(cy + dy, size, source.height - 1 - size))
            draw_shape(frames[t], dataclasses.replace(shape, size=size, start=(x, y), velocity=(0.0, 0.0)), 0)
    return frames


def vae_roundtrip(clips: np.ndarray, checkpoint: str, batch_size: int = 8) -> np.ndarray:
    """uint8 (K, T, H, W, 3): `clips` encoded (posterior means) and decoded by the VAE stored at `checkpoint`."""
    import jax
    import jax.numpy as jnp

    from sfv_jax.checkpoint import load_checkpoint
    from sfv_jax.train.encode import frames_to_unit_range

    vae = load_checkpoint(checkpoint, names=["vae"])["vae"]
    num_frames = clips.shape[1]

    @jax.jit
    def roundtrip(video):
        frames = frames_to_unit_range(video).reshape(-1, *video.shape[2:])
        return vae.decode(vae.encode(frames), num_frames).reshape(video.shape)

    out = [np.asarray(roundtrip(jnp.asarray(clips[i:i + batch_size]))) for i in range(0, len(clips), batch_size)]
    return np.clip(np.round((np.concatenate(out) + 1) * 127.5), 0, 255).astype(np.uint8)


def variant_clips(source: SyntheticVideos, videos: np.ndarray, variant: str, seed: int,
                  vae_checkpoint: str | None = None) -> np.ndarray:
    """uint8 (K, T, H, W, 3): every clip of `source` (already drawn: `videos`) with `variant`'s change."""
    if variant == "vae":
        return vae_roundtrip(videos, vae_checkpoint)
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(len(source)):
        video = videos[i]
        background = np.broadcast_to(source.background(i), video.shape)
        if variant == "faded":
            video = ((video.astype(np.uint16) + background) // 2).astype(np.uint8)
        elif variant == "no_shapes":
            video = background.copy()
        elif variant == "frozen":
            video = np.repeat(video[:1], len(video), axis=0)
        elif variant == "shuffled":
            video = video[rng.permutation(len(video))]
        elif variant == "blurred":
            video = gaussian_blur(video, 1.5)
        elif variant == "jittered":
            video = redrawn(source, i, rng, jitter_px=2.0)
        elif variant == "resized":
            video = redrawn(source, i, rng, size_range=(0.6, 1.4))
        clips.append(video)
    return np.stack(clips)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real-stats", required=True, metavar="F.npz",
                        help="the toy table's held-out statistics (eval toy --real-stats)")
    parser.add_argument("--table-clips", type=int, default=256, help="clips behind --real-stats (the table's K)")
    parser.add_argument("--table-seed", type=int, default=0, help="the table's --seed")
    parser.add_argument("--num-clips", type=int, default=128, help="clips per probed set")
    parser.add_argument("--probe-seed", type=int, default=1,
                        help="held-out stream of the probed clips (not the table's --seed, so not its clips)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--vae-checkpoint", default="models/toy/teacher", metavar="CKPT",
                        help="the 'vae' variant's VAE: any sfv-jax checkpoint holding one (the toy teacher's is the "
                             "student's too)")
    parser.add_argument("--json", metavar="F", help="write the results here too")
    args = parser.parse_args()

    from sfv_jax.errors import SfvError
    from sfv_jax.eval.fvd import set_stats
    from sfv_jax.eval.motion import motion_report
    from sfv_jax.eval.protocol import I3DFeatures
    from sfv_jax.eval.stats import frechet_distance
    from sfv_jax.eval.toy import i3d_frame_repeat, saved_real_stats, toy_protocol
    from sfv_jax.eval.video_sets import MemorySet

    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        print(f"toy_fvd_probe: error: unknown --variants {unknown or args.variants!r}; choose from {VARIANTS}",
              file=sys.stderr)
        return 2
    if args.probe_seed == args.table_seed:
        print("toy_fvd_probe: error: --probe-seed equals --table-seed: the probe would score the table's own clips; "
              "pick another", file=sys.stderr)
        return 2
    if not os.path.isfile(args.real_stats):
        print(f"toy_fvd_probe: error: --real-stats {args.real_stats}: no such file (make it with sfv-jax eval toy "
              f"--real-stats)", file=sys.stderr)
        return 2
    try:
        real_stats = saved_real_stats(args.real_stats, toy_protocol(args.num_frames, args.size, args.size,
                                                                    args.table_clips, args.table_seed))
    except SfvError as e:
        print(f"toy_fvd_probe: error: {e}", file=sys.stderr)
        return 2

    source = SyntheticVideos(args.num_clips, args.num_frames, args.size, args.size,
                             seed=HELDOUT_SYNTHETIC_SEED_OFFSET + args.probe_seed)
    reference = np.stack([source.video(i) for i in range(len(source))])
    repeat = i3d_frame_repeat(args.num_frames)
    extractor = I3DFeatures(batch_size=args.batch_size)
    settings = {"num_clips": args.num_clips, "probe_seed": args.probe_seed, "table_clips": args.table_clips,
                "table_seed": args.table_seed}
    results = {}
    if args.json and os.path.isfile(args.json):
        with open(args.json) as f:
            earlier = json.load(f)
        if {k: earlier.get(k) for k in settings} == settings:
            results = {k: v for k, v in earlier["results"].items() if k not in variants}
    for variant in variants:
        clips = variant_clips(source, reference, variant, args.probe_seed, args.vae_checkpoint)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the rank warning of a small set: the count is in the output
            stats = set_stats(MemorySet(np.repeat(clips, repeat, axis=1), variant), extractor, f"I3D {variant}")
        motion = motion_report(clips, reference)
        results[variant] = {"fvd": frechet_distance(real_stats.mean, real_stats.cov, stats.mean, stats.cov),
                            "motion_coherent_share": motion["coherent_share"],
                            "speed_distance": motion["speed_wasserstein_px_per_frame"]}
        print(f"{variant}: {json.dumps(results[variant])}", flush=True)

    print(f"\n{args.num_clips} clips per set (held-out stream {args.probe_seed}) against the table's statistics "
          f"({args.table_clips} clips, stream {args.table_seed})\n")
    print("| set | FVD | coherent motion | speed distance (px/frame) |\n|---|---|---|---|")
    for variant, r in results.items():
        speed = "n/a" if r["speed_distance"] is None else f"{r['speed_distance']:.3f}"
        print(f"| {variant} | {r['fvd']:.1f} | {r['motion_coherent_share']:.1%} | {speed} |")
    if args.json:
        from sfv_jax.fileio import write_text_atomically

        write_text_atomically(args.json, json.dumps({**settings, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
