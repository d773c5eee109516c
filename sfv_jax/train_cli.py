"""`sfv-jax train --config FILE.py[:VARIANT] --workdir DIR [--config.a.b=value ...] [--multihost ...]`."""

from __future__ import annotations

import os

from sfv_jax.config import split_overrides


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
