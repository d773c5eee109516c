"""The train step as two programs (config.step_programs=split) against one (fused): compile seconds and step time.

Any objective (sfv, denoise, vae): the state starts as `sfv-jax train` starts it (random weights, or
config.init_checkpoint), the batch is the objective's encoding of random uint8 clips. Both modes are compiled in
one process, then timed in interleaved rounds (split, fused, split, ...) so that a shared machine's drift hits
both alike; BENCHMARKS.md "Compile cost by structure" holds the results.

    python tools/bench_step_programs.py --config configs/tiny_sfv.py --override data.num_frames=8 \
        --override data.height=64 --override data.width=64 --override global_batch_size=8 \
        --override grad_accum_steps=1 --override sfv.r1_mode=approx
    python tools/bench_step_programs.py --config configs/toy.py:teacher
    python tools/bench_step_programs.py --modes split --sequential --compile-only   # compile cost alone

--sequential compiles the split step's two programs one after the other (as `sfv-jax plan` does) rather than at
once on two threads (as training does).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from sfv_jax.config import load_config
from sfv_jax.parallel.mesh import make_mesh
from sfv_jax.parallel.rules import batch_axes, batch_spec
from sfv_jax.parallel.sharding import jit_train_step
from sfv_jax.parallel.step_programs import STEP_PROGRAMS, run_compiled
from sfv_jax.train.objectives import make_objective


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/tiny_sfv.py", help="a train config, FILE[:VARIANT]")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--rounds", type=int, default=8, help="timed rounds per mode (the first is dropped as warm-up)")
    p.add_argument("--steps-per-round", type=int, default=3)
    p.add_argument("--modes", default=",".join(STEP_PROGRAMS), help="comma-separated step programs to measure")
    p.add_argument("--sequential", action="store_true", help="compile the split step's programs in turn")
    p.add_argument("--compile-only", action="store_true", help="compile, do not time steps")
    p.add_argument("--json", metavar="OUT.json")
    args = p.parse_args()
    if args.rounds < 2 or args.steps_per_round < 1:
        p.error("--rounds must be >= 2 and --steps-per-round >= 1")
    modes = args.modes.split(",")
    if not modes or any(mode not in STEP_PROGRAMS for mode in modes):
        p.error(f"--modes {args.modes!r}: use a comma-separated subset of {','.join(STEP_PROGRAMS)}")
    config = load_config(args.config, args.override)
    mesh = make_mesh(config.mesh)
    frames = np.random.default_rng(0).integers(0, 256, (config.global_batch_size, config.data.num_frames,
                                                         config.data.height, config.data.width, 3), np.uint8)
    steps, states, compiles = {}, {}, {}
    with jax.set_mesh(mesh):
        objective = make_objective(config, batch_axes(config.sharding.rules))
        abstract = objective.abstract_state()
        weights, _, _ = objective.initial_weights()
        first = jax.jit(objective.init_state)(weights)
        frames = jax.device_put(frames, jax.sharding.NamedSharding(mesh, batch_spec(config.sharding.rules)))
        batch = jax.jit(objective.encode)(objective.frozen_encoders(first), frames, jax.random.PRNGKey(0))
        abstract_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
        for mode in modes:
            step, state_sh, batch_sh = jit_train_step(objective.step, abstract, abstract_batch, mesh,
                                                      config.sharding, mode)
            start = time.perf_counter()
            programs = step.compile(abstract, abstract_batch, progress=lambda line: print(f"  {line}", flush=True),
                                    parallel=not args.sequential)
            compiles[mode] = dict(total_s=time.perf_counter() - start,
                                  xla_s={p.name: p.compile_s for p in programs})
            print(f"{mode}: compiled in {compiles[mode]['total_s']:.1f} s", flush=True)
            steps[mode] = run_compiled(programs)
            states[mode] = jax.device_put(jax.jit(objective.init_state)(weights), state_sh)
        batch = jax.device_put(batch, batch_sh)
        seconds = {mode: [] for mode in modes}
        for _ in range(0 if args.compile_only else args.rounds):
            for mode in modes:
                start = time.perf_counter()
                for _ in range(args.steps_per_round):
                    states[mode], metrics = steps[mode](states[mode], batch)
                jax.block_until_ready((states[mode], metrics))
                seconds[mode].append((time.perf_counter() - start) / args.steps_per_round)
    result = {"config": args.config, "overrides": args.override, "sequential": args.sequential,
              **{mode: dict(**compiles[mode], step_s=seconds[mode],
                            step_s_median=float(np.median(seconds[mode][1:])) if seconds[mode] else None)
                 for mode in modes}}
    if set(modes) == set(STEP_PROGRAMS) and not args.compile_only:
        ratios = [s / f for s, f in zip(seconds["split"][1:], seconds["fused"][1:])]
        result["split_over_fused_step"] = dict(median=float(np.median(ratios)), min=min(ratios), max=max(ratios))
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
