"""The `sfv-jax` command line: convert, export, demo."""

from __future__ import annotations

import argparse
import sys

from sfv_jax.errors import SfvError


def _add_convert(subparsers):
    p = subparsers.add_parser("convert", help="diffusers folder -> sfv-jax (Orbax) checkpoint")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--diffusers", metavar="DIR", help="a diffusers unet/ folder or a whole SVD pipeline folder")
    src.add_argument("--hf-repo", metavar="ID", help="a Hugging Face repo id to download first")
    p.add_argument("--revision", default=None, help="git revision of --hf-repo")
    p.add_argument("--variant", default=None, help="weights variant to read, e.g. fp16")
    p.add_argument("--out", required=True, metavar="CKPT", help="checkpoint folder to create")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="dtype of the stored params")
    p.add_argument("--overwrite", action="store_true", help="replace CKPT if it exists")
    p.set_defaults(run=_run_convert)


def _run_convert(args):
    import time

    from sfv_jax.checkpoint import save_checkpoint
    from sfv_jax.convert.hub import download_pipeline
    from sfv_jax.convert.pipeline import load_diffusers_folder

    start = time.perf_counter()
    folder = args.diffusers or download_pipeline(args.hf_repo, args.revision, args.variant)
    modules = load_diffusers_folder(folder, variant=args.variant, progress=True)
    save_checkpoint(args.out, modules, extra={"source": folder}, dtype=args.dtype, overwrite=args.overwrite)
    print(f"wrote {args.out} ({', '.join(modules)}) in {time.perf_counter() - start:.1f}s")


def _add_export(subparsers):
    p = subparsers.add_parser("export", help="sfv-jax checkpoint -> diffusers folder")
    p.add_argument("--checkpoint", required=True, metavar="CKPT")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to create")
    p.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"),
                   help="dtype of the written tensors (default: as stored)")
    p.set_defaults(run=_run_export)


def _run_export(args):
    from sfv_jax.checkpoint import load_checkpoint
    from sfv_jax.convert.pipeline import write_diffusers_folder

    modules = load_checkpoint(args.checkpoint)
    import ml_dtypes
    import numpy as np
    dtype = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}.get(args.dtype)
    write_diffusers_folder(modules, args.out, dtype)
    print(f"wrote {args.out} ({', '.join(modules)})")


def _add_demo(subparsers):
    p = subparsers.add_parser("demo", help="tiny end-to-end run on random weights, no downloads")
    p.add_argument("--config", default="configs/tiny.py", help="config file[:variant]")
    p.add_argument("--workdir", default=None, help="where to keep the demo's files (default: a temp folder)")
    p.set_defaults(run=lambda args: __import__("sfv_jax.demo", fromlist=["run"]).run(args.config, args.workdir))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfv-jax", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_convert(subparsers)
    _add_export(subparsers)
    _add_demo(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except SfvError as e:
        print(f"sfv-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sfv-jax {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
