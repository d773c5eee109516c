"""`sfv-jax plan --config FILE[:VARIANT] --topology NAME [--config.k=v ...] [--program train|sample] [--json F]`."""

from __future__ import annotations

import contextlib
import os
import sys

from sfv_jax.errors import SfvError

DESCRIPTION = (
    "Compiles the real train step (or, with --program sample, SF-V's one-step generation) ahead of time for a "
    "topology, without its devices or any weights, and prints per device: train-state bytes by kind, XLA's argument, "
    "output, temporary and total bytes, the chip's HBM and the headroom, FLOPs per step and the step time at 40%% "
    "MFU. Topologies: cpu:N, or a TPU slice such as v5p:2x2x1, v4:2x2x1, v5e:2x4, v6e:4x4 (needs libtpu: "
    "pip install -e \".[tpu]\"; no TPU). Config fields can be overridden with --config.a.b=value, as for train.")


def add_plan_parser(subparsers) -> None:
    p = subparsers.add_parser("plan", help="compile for a TPU/CPU topology ahead of time: memory, FLOPs, step time",
                              description=DESCRIPTION)
    p.add_argument("--config", required=True, metavar="FILE.py[:VARIANT]", help="e.g. configs/sfv_svd.py")
    p.add_argument("--topology", required=True, metavar="NAME", help="cpu:N, or CHIP:AxB[xC] (v4, v5e, v5p, v6e)")
    p.add_argument("--program", choices=("train", "sample"), default="train",
                   help="train: the config's train step (its objective); sample: one-step generation")
    p.add_argument("--height", type=int, default=None, help="sample: frame height (default: config.data.height)")
    p.add_argument("--width", type=int, default=None, help="sample: frame width (default: config.data.width)")
    p.add_argument("--num-frames", type=int, default=None, help="sample: frames (default: config.data.num_frames)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the figures to FILE as JSON")
    p.add_argument("--compilation-cache", metavar="DIR", default=None,
                   help="persistent XLA compilation cache (default: $SFV_JAX_COMPILATION_CACHE, else off)")
    p.set_defaults(run=run_plan, accepts_config_overrides=True)


def run_plan(args, extra: list[str]) -> None:
    """Parses, builds the target and checks every input before compiling; writes --json only on success."""
    import jax

    # The plan compiles for its target and never runs anything: the host's CPU backend is all it needs, and not
    # initialising a TPU runtime keeps a machine with libtpu but no TPU quiet (and a TPU VM's chips free).
    jax.config.update("jax_platforms", "cpu")
    from sfv_jax.compilation_cache import enable_compilation_cache
    from sfv_jax.config import load_config, split_overrides
    from sfv_jax.plan.topology import parse_topology

    overrides = split_overrides(extra)
    if args.json and os.path.isdir(args.json):
        raise SfvError(f"--json {args.json} is a directory; give a file path")
    config = load_config(args.config, overrides)
    topology = parse_topology(args.topology)
    enable_compilation_cache(args.compilation_cache)
    if args.compilation_cache and topology.platform == "tpu":
        print(f"note: --compilation-cache is not used for TPU topologies: JAX cannot read back a program compiled "
              f"without a TPU (it would only write to it)", file=sys.stderr)
    with _persistent_cache(enabled=topology.platform != "tpu"):
        _plan(args, config, overrides, topology)


@contextlib.contextmanager
def _persistent_cache(enabled: bool):
    """JAX's persistent compilation cache on or off for the block, restored after (tests run plans in-process).

    Off for TPU targets: a compile-only TPU executable is written to the cache but reading it back fails ("PjRtCompiler
    must be constructed with a Client to call Deserialize", jax 0.10.2 + libtpu 0.0.42.1) with a warning each time.
    """
    import jax
    before = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", before and enabled)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", before)


def _plan(args, config, overrides, topology) -> None:
    from sfv_jax.plan import compile as plan_compile
    from sfv_jax.plan.report import Plan, format_plan, write_json
    spec = " ".join([args.config, *(f"--config.{o}" for o in overrides)])
    if args.program == "train":
        mesh = plan_compile.build_mesh(config, topology)
        warnings = plan_compile.check_batch(config, mesh)
        print(f"compiling the {config.get('objective', 'sfv')} train step for {topology.name} "
              f"({len(topology.devices)} devices)...", file=sys.stderr, flush=True)
        programs, state_bytes, lower_s = plan_compile.plan_train(
            config, topology, mesh, progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True))
        mesh_sizes = dict(mesh.shape)
        shapes = {"global_batch": config.global_batch_size, "grad_accum_steps": config.grad_accum_steps,
                  "frames": config.data.num_frames, "height": config.data.height, "width": config.data.width}
    else:
        height = args.height or config.data.height
        width = args.width or config.data.width
        num_frames = args.num_frames or config.data.num_frames
        print(f"compiling one-step generation ({num_frames}x{height}x{width}, one clip per device) for "
              f"{topology.name}...", file=sys.stderr, flush=True)
        programs, lower_s = plan_compile.plan_sample(config, topology, height, width, num_frames)
        state_bytes, warnings = None, []
        mesh_sizes = {"data": len(topology.devices)}
        shapes = {"clips": len(topology.devices), "frames": num_frames, "height": height, "width": width}
    plan = Plan(program=args.program, config=spec, topology=topology.name, platform=topology.platform,
                devices=len(topology.devices), hosts=topology.hosts, mesh=mesh_sizes, chip=topology.chip,
                state_bytes=state_bytes, programs=programs, warnings=warnings, shapes=shapes,
                lower_s=lower_s)
    print(format_plan(plan))
    if args.json:
        write_json(plan, args.json)
        print(f"wrote {args.json}")
