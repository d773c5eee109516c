"""The train step as two programs (config.step_programs=split) against one (fused): compile seconds and step time.

Both are compiled in one process, then timed in interleaved rounds (split, fused, split, ...) so that a shared
machine's drift hits both alike; BENCHMARKS.md "Compile cost by structure" holds the results.

    python tools/bench_step_programs.py --config configs/tiny_sfv.py --override data.num_frames=8 \
        --override data.height=64 --override data.width=64 --override global_batch_size=8 \
        --override grad_accum_steps=1 --override sfv.r1_mode=approx
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from sfv_jax.bench.train import random_batch
from sfv_jax.config import load_config
from sfv_jax.parallel.mesh import make_mesh
from sfv_jax.parallel.sharding import jit_train_step
from sfv_jax.parallel.step_programs import STEP_PROGRAMS, run_compiled
from sfv_jax.train.state import SFVModels, abstract_state, new_state
from sfv_jax.train.step import make_train_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/tiny_sfv.py", help="an SF-V train config")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--rounds", type=int, default=8, help="timed rounds per mode (the first is dropped as warm-up)")
    p.add_argument("--steps-per-round", type=int, default=3)
    p.add_argument("--json", metavar="OUT.json")
    args = p.parse_args()
    if args.rounds < 2 or args.steps_per_round < 1:
        p.error("--rounds must be >= 2 and --steps-per-round >= 1")
    config = load_config(args.config, args.override)
    models = SFVModels(config)
    mesh = make_mesh(config.mesh)
    host_batch = random_batch(config)
    abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in host_batch.items()}
    steps, states, compiles = {}, {}, {}
    with jax.set_mesh(mesh):
        abstract = abstract_state(models)
        for mode in STEP_PROGRAMS:
            step, state_sh, batch_sh = jit_train_step(make_train_step(config, models, batch_axes=("data", "fsdp")),
                                                      abstract, abstract_batch, mesh, config.sharding, mode)
            start = time.perf_counter()
            programs = step.compile(abstract, abstract_batch)
            compiles[mode] = dict(total_s=time.perf_counter() - start,
                                  xla_s={p.name: p.compile_s for p in programs})
            print(f"{mode}: compiled in {compiles[mode]['total_s']:.1f} s "
                  f"({', '.join(f'{n} {s:.1f} s' for n, s in compiles[mode]['xla_s'].items())})", flush=True)
            steps[mode] = run_compiled(programs)
            states[mode] = jax.device_put(new_state(config, models), state_sh)
        batch = jax.device_put(host_batch, batch_sh)
        seconds = {mode: [] for mode in STEP_PROGRAMS}
        for _ in range(args.rounds):
            for mode in STEP_PROGRAMS:
                start = time.perf_counter()
                for _ in range(args.steps_per_round):
                    states[mode], metrics = steps[mode](states[mode], batch)
                jax.block_until_ready((states[mode], metrics))
                seconds[mode].append((time.perf_counter() - start) / args.steps_per_round)
    ratios = [s / f for s, f in zip(seconds["split"][1:], seconds["fused"][1:])]
    result = {mode: dict(**compiles[mode], step_s_median=float(np.median(seconds[mode][1:])), step_s=seconds[mode])
              for mode in STEP_PROGRAMS}
    result["split_over_fused_step"] = dict(median=float(np.median(ratios)), min=min(ratios), max=max(ratios))
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
