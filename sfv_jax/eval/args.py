"""Command-line arguments shared by the `sfv-jax eval` subcommands."""

from __future__ import annotations

SRC_HELP = "a folder of videos, FILE.npz holding one uint8 array (N, T, H, W, 3), or tfds:NAME[:SPLIT]"


def add_set_arguments(p, num_frames_default: int | None = 16) -> None:
    p.add_argument("--num-frames", type=int, default=num_frames_default,
                   help="frames per clip, from each video's start (0: whole videos, which must then be equally long)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N videos of each set")
    p.add_argument("--tfds-data-dir", default=None, metavar="DIR", help="where tfds: sets are prepared")


def frames_arg(args) -> int | None:
    """--num-frames as the readers take it: None for whole videos (0 on the command line)."""
    return None if args.num_frames == 0 else args.num_frames
