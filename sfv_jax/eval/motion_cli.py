"""`sfv-jax eval motion --fake SRC [--real SRC]`: the synthetic-data motion report (motion.py) of one or two sets."""

from __future__ import annotations

import json

from sfv_jax.errors import SfvError


def add_motion_parser(commands) -> None:
    from sfv_jax.eval.args import SRC_HELP, add_set_arguments

    p = commands.add_parser("motion", help="do synthetic shapes keep colour, size and a constant velocity?")
    p.add_argument("--fake", required=True, metavar="SRC", help=f"the clips to check: {SRC_HELP}")
    p.add_argument("--real", metavar="SRC", help="real clips: their report, and the distance between speed "
                                                 "distributions")
    p.add_argument("--json", metavar="F", help="also write the whole report as JSON")
    p.add_argument("--centroid-tol", type=float, default=None, metavar="PX",
                   help="largest median distance (pixels) of a shape's centroid from its constant-velocity line "
                        "(default 1.0)")
    add_set_arguments(p, num_frames_default=0)
    p.set_defaults(run=run_motion)


def _clips(video_set, limit):
    from sfv_jax.eval.video_sets import batches

    for batch in batches(video_set, 16, limit):
        yield from batch


def run_motion(args) -> None:
    import dataclasses
    import os

    from sfv_jax.eval.args import frames_arg
    from sfv_jax.eval.motion import Tolerances, motion_report
    from sfv_jax.fileio import write_text_atomically
    from sfv_jax.eval.video_sets import open_video_set

    if args.json and os.path.isdir(args.json):
        raise SfvError(f"--json {args.json} is a folder; give a file name")
    tol = Tolerances()
    if args.centroid_tol is not None:
        tol = dataclasses.replace(tol, centroid_tol=args.centroid_tol)
    num_frames = frames_arg(args)
    fake = open_video_set(args.fake, num_frames, args.tfds_data_dir)
    real = None if args.real is None else open_video_set(args.real, num_frames, args.tfds_data_dir)
    report = motion_report(_clips(fake, args.limit), None if real is None else _clips(real, args.limit), tol)
    if args.json:
        write_text_atomically(args.json, json.dumps(report, indent=2) + "\n")
    for name, part in (("fake", report), ("real", report.get("real"))):
        if part is None:
            continue
        speed = part["speed_px_per_frame"]
        print(f"{name}: {part['num_clips']} clips ({part['clips_not_judged']} with overlapping shapes not judged), "
              f"coherent {part['coherent_share']:.1%} (colour {part['keeps_colour_share']:.1%}, size "
              f"{part['keeps_size_share']:.1%}, constant velocity {part['constant_velocity_share']:.1%}), median "
              f"centroid error {_px(part['median_centroid_error_px'])}, median speed "
              f"{_px(speed and speed['median'])}/frame")
    if real is not None:
        print(f"speed distance (Wasserstein, fake vs real) {_px(report['speed_wasserstein_px_per_frame'])}/frame")


def _px(value) -> str:
    return "n/a" if value is None else f"{value:.3f} px"
