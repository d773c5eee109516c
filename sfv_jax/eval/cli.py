"""`sfv-jax eval fvd | generate | motion | toy`: FVD under StyleGAN-V's protocol, clips to score, the motion
report, and all of them at once for a checkpoint on held-out synthetic clips."""

from __future__ import annotations


def add_eval_parser(subparsers) -> None:
    """Registers `eval` and its subcommands on the top-level `sfv-jax` parser."""
    from sfv_jax.eval.fvd_cli import add_fvd_parser
    from sfv_jax.eval.generate import add_generate_parser
    from sfv_jax.eval.motion_cli import add_motion_parser
    from sfv_jax.eval.toy import add_toy_parser

    p = subparsers.add_parser("eval", help="FVD (I3D, StyleGAN-V protocol), clips to score, the motion report")
    commands = p.add_subparsers(dest="eval_command", required=True)
    add_fvd_parser(commands)
    add_generate_parser(commands)
    add_motion_parser(commands)
    add_toy_parser(commands)
