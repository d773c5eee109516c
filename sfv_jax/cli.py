"""The `sfv-jax` command line. `sfv-jax --help` lists every command; `sfv-jax COMMAND --help` its options."""

from __future__ import annotations

import argparse
import sys

from sfv_jax.errors import SfvError


def _add_convert(subparsers):
    p = subparsers.add_parser("convert", help="diffusers folder (or a training workdir) -> sfv-jax (Orbax) checkpoint")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--diffusers", metavar="DIR", help="a diffusers unet/ folder or a whole SVD pipeline folder")
    src.add_argument("--hf-repo", metavar="ID", help="a Hugging Face repo id to download first")
    src.add_argument("--workdir", metavar="DIR",
                     help="a training workdir: its latest checkpoint's models (the generator's EMA weights) as a "
                          "standalone checkpoint, e.g. to ship a trained model in bfloat16")
    p.add_argument("--revision", default=None, help="git revision of --hf-repo")
    p.add_argument("--variant", default=None, help="weights variant to read, e.g. fp16")
    p.add_argument("--out", required=True, metavar="CKPT", help="checkpoint folder to create")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="dtype of the stored params")
    p.add_argument("--overwrite", action="store_true", help="replace CKPT if it exists")
    p.set_defaults(run=_run_convert)


def _refuse_existing(path: str, overwrite: bool = False) -> None:
    """Fails before any work when the output exists (the atomic writers would fail only at the end)."""
    import os
    if os.path.exists(path) and not overwrite:
        raise SfvError(f"{os.path.abspath(path)} already exists; choose another --out or delete it first")


def _run_convert(args):
    import time

    from sfv_jax.checkpoint import save_checkpoint
    from sfv_jax.convert.hub import download_pipeline
    from sfv_jax.convert.pipeline import load_diffusers_folder, read_pipeline_configs

    start = time.perf_counter()
    _refuse_existing(args.out, args.overwrite)
    if args.workdir:
        return _convert_workdir(args, start)
    folder = args.diffusers or download_pipeline(args.hf_repo, args.revision, args.variant)
    pipeline = read_pipeline_configs(folder)  # None for a single component folder
    # Progress bars only on a terminal: a failed run prints its one-line error and nothing else.
    modules = load_diffusers_folder(folder, variant=args.variant, progress=sys.stderr.isatty())
    extra = {"source": args.hf_repo or folder, **({"revision": args.revision} if args.hf_repo else {}),
             **({"variant": args.variant} if args.variant else {}), **({"pipeline": pipeline} if pipeline else {})}
    save_checkpoint(args.out, modules, extra=extra, dtype=args.dtype, overwrite=args.overwrite)
    print(f"wrote {args.out} ({', '.join(modules)}{' + pipeline configs' if pipeline else ''}, {args.dtype}) "
          f"in {time.perf_counter() - start:.1f}s")


def _convert_workdir(args, start: float) -> None:
    """A training workdir's latest models (EMA generator, frozen encoders) -> a standalone sfv-jax checkpoint."""
    import time

    from sfv_jax.checkpoint import load_checkpoint, read_index, save_checkpoint, train_state_step

    index = read_index(args.workdir)
    step = train_state_step(args.workdir, index)
    if step is None:
        raise SfvError(f"{args.workdir}: is a converted checkpoint, not a training workdir; use it as it is")
    modules = load_checkpoint(args.workdir)
    # The run's pipeline configs and objective stay, so the copy loads as the workdir does (a pipeline or a VAE).
    extra = {**index.get("extra", {}), "source": args.workdir, "step": step}
    save_checkpoint(args.out, modules, extra=extra, dtype=args.dtype, overwrite=args.overwrite)
    print(f"wrote {args.out} ({', '.join(modules)} of step {step}, EMA, {args.dtype}) "
          f"in {time.perf_counter() - start:.1f}s")


def _add_export(subparsers):
    p = subparsers.add_parser(
        "export", help="sfv-jax checkpoint -> diffusers folder (a whole pipeline folder if it was converted from one)")
    p.add_argument("--checkpoint", required=True, metavar="CKPT_OR_WORKDIR",
                   help="an sfv-jax checkpoint, or a training workdir (its latest checkpoint: a whole pipeline folder)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to create")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                   help="from a workdir: the generator's EMA weights (default) or, with --no-ema, the raw ones")
    p.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"),
                   help="dtype of the written tensors (default: float32)")
    p.set_defaults(run=_run_export)


def _run_export(args):
    import ml_dtypes
    import numpy as np

    from sfv_jax.checkpoint import load_checkpoint, read_index, train_state_step
    from sfv_jax.convert.pipeline import write_diffusers_folder

    _refuse_existing(args.out)
    index = read_index(args.checkpoint)
    pipeline = index.get("extra", {}).get("pipeline")
    modules = load_checkpoint(args.checkpoint, raw=not args.ema)
    if len(modules) == 1:
        pipeline = None  # one model (e.g. a `vae` objective's workdir): a diffusers component folder
    step = train_state_step(args.checkpoint, index)
    if step is not None:
        print(f"{args.checkpoint}: step {step}, {'EMA' if args.ema else 'raw (--no-ema)'} generator weights")
    dtype = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}.get(args.dtype)
    write_diffusers_folder(modules, args.out, dtype, pipeline=pipeline)
    print(f"wrote {args.out} ({'pipeline: ' if pipeline else ''}{', '.join(modules)})")


def _add_demo(subparsers):
    p = subparsers.add_parser("demo", help="a shipped toy model makes a video from an image (no downloads); "
                                           "--journey: convert -> train -> export on random weights")
    p.add_argument("--checkpoint", default=None, metavar="CKPT_OR_WORKDIR",
                   help="a pipeline checkpoint or training workdir (default: the shipped models/toy/student)")
    p.add_argument("--image", default=None, help="input image (default: a held-out synthetic first frame)")
    p.add_argument("--steps", type=int, default=1, help="sampler steps (1: one UNet call)")
    p.add_argument("--sampler", choices=("euler", "sfv"), default="euler",
                   help="euler: SVD's sampler (one step: x0 = D(x; sigma_max)); sfv: SF-V's 1-3 step refinement")
    p.add_argument("--seed", type=int, default=0, help="picks the held-out clip and the noise")
    p.add_argument("--workdir", default="demo_out", help="where the demo writes its files")
    p.add_argument("--journey", action="store_true",
                   help="instead: a tiny random SVD written as diffusers, converted, SF-V-trained, sampled, exported")
    p.add_argument("--config", default="configs/tiny_sfv.py:micro", help="--journey: the SF-V training config")
    p.add_argument("--train-steps", type=int, default=8, help="--journey: SF-V training steps to run")
    p.add_argument("--compilation-cache", metavar="DIR", default=None,
                   help="persistent JAX compilation cache (default: $SFV_JAX_COMPILATION_CACHE, else off)")
    p.set_defaults(run=_run_demo)


def _run_demo(args):
    from sfv_jax.compilation_cache import enable_compilation_cache

    enable_compilation_cache(args.compilation_cache)
    if args.journey:
        from sfv_jax.demo.journey import run
        run(args.config, args.workdir, args.train_steps)
        return
    if args.steps < 1:
        raise SfvError(f"--steps must be >= 1, got {args.steps}")
    if args.sampler == "sfv" and args.steps > 3:
        raise SfvError(f"--sampler sfv runs 1 to 3 steps, got --steps {args.steps}")
    from sfv_jax.demo.shipped import run
    run(args.checkpoint, args.image, args.workdir, args.steps, args.sampler, args.seed)


DESCRIPTION = ("Stable Video Diffusion and SF-V (one-step image-to-video) in JAX. Commands: {commands}. "
               "Run sfv-jax COMMAND --help for a command's options.")


def build_parser() -> argparse.ArgumentParser:
    from sfv_jax import __version__
    parser = argparse.ArgumentParser(prog="sfv-jax")
    parser.add_argument("--version", action="version", version=f"sfv-jax {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_convert(subparsers)
    _add_export(subparsers)
    _add_demo(subparsers)
    from sfv_jax.bench.cli import add_bench_parser
    from sfv_jax.eval.cli import add_eval_parser
    from sfv_jax.plan.cli import add_plan_parser
    from sfv_jax.sample_cli import add_sample_parser
    from sfv_jax.train_cli import add_train_parser
    add_sample_parser(subparsers)
    add_train_parser(subparsers)
    add_bench_parser(subparsers)
    add_eval_parser(subparsers)
    add_plan_parser(subparsers)
    # Named from the parsers themselves, so a new command is never missing from the description.
    parser.description = DESCRIPTION.format(commands=", ".join(subparsers.choices))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Only `train` and `plan` take free-form --config.a.b=value overrides; every other command parses strictly.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_config_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if getattr(args, "accepts_config_overrides", False):
            args.run(args, extra)
        else:
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
