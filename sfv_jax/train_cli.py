"""`sfv-jax train --config FILE.py[:VARIANT] --workdir DIR [--config.a.b=value ...] [--multihost ...]`."""

from __future__ import annotations

import os

from sfv_jax.errors import SfvError


def add_train_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="SF-V adversarial training (resumes from the workdir's latest checkpoint)",
        description="Trains SF-V. Any config field can be overridden with --config.a.b=value (a Python literal or a "
                    "string); a key the config does not define is an error. Rerunning the same command resumes.")
    p.add_argument("--config", required=True, metavar="FILE.py[:VARIANT]", help="e.g. configs/tiny_sfv.py")
    p.add_argument("--workdir", required=True, metavar="DIR", help="checkpoints, metrics.jsonl, tensorboard/, samples/")
    p.add_argument("--compilation-cache", metavar="DIR", default=None, help="persistent XLA compilation cache")
    p.add_argument("--reconfigure", action="store_true",
                   help="resume even though the objective, optimiser, discriminator, model, data, batch or seed "
                        "changed (otherwise an error naming the changed keys); the weights, optimiser moments, "
                        "rng and data position carry over, the learning rates take the new values, and the "
                        "changes are appended to WORKDIR/reconfigure.log")
    multi = p.add_argument_group("multi-host (jax.distributed)")
    multi.add_argument("--multihost", action="store_true",
                       help="initialise jax.distributed first; without the flags below it reads the environment "
                            "(TPU pods, SLURM)")
    multi.add_argument("--coordinator-address", metavar="HOST:PORT", default=None)
    multi.add_argument("--num-processes", type=int, default=None)
    multi.add_argument("--process-id", type=int, default=None)
    p.set_defaults(run=run_train, accepts_config_overrides=True)


def split_overrides(extra: list[str]) -> list[str]:
    """["--config.a.b=1", "--config.c", "2"] -> ["a.b=1", "c=2"]; anything else is an error."""
    overrides, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--config."):
            raise SfvError(f"unrecognised argument {arg!r}; config overrides look like --config.a.b=value")
        key, sep, value = arg[len("--config."):].partition("=")
        if not sep:
            if i + 1 >= len(extra):
                raise SfvError(f"{arg} needs a value: {arg}=VALUE")
            value, i = extra[i + 1], i + 1
        overrides.append(f"{key}={value}")
        i += 1
    return overrides


def init_distributed(args) -> None:
    """jax.distributed.initialize, before anything touches a device. CPU processes use gloo collectives."""
    import jax
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {k: v for k, v in dict(coordinator_address=args.coordinator_address, num_processes=args.num_processes,
                                    process_id=args.process_id).items() if v is not None}
    jax.distributed.initialize(**kwargs)


def run_train(args, extra: list[str]) -> None:
    overrides = split_overrides(extra)
    if args.multihost:
        init_distributed(args)
    from sfv_jax.compilation_cache import enable_compilation_cache
    from sfv_jax.config import load_config
    from sfv_jax.train.loop import train
    config = load_config(args.config, overrides)
    enable_compilation_cache(args.compilation_cache)
    step = train(config, args.workdir, reconfigure=args.reconfigure)
    print(f"trained to step {step}; workdir {os.path.abspath(args.workdir)}")
