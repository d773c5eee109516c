"""One-step SF-V vs multi-step SVD with CFG, end to end and per stage, on random weights.

    python tools/bench_sampling.py --config configs/tiny.py --height 64 --width 64 --num-frames 4
    python tools/bench_sampling.py --config configs/svd_xt.py --height 64 --width 64 --num-frames 14 --repeats 1

Prints a markdown table (compile time apart from the steady run time, medians over --repeats
runs after a warm-up call) and writes the numbers as JSON next to --json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import PIL.Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sfv_jax.config import load_config  # noqa: E402
from sfv_jax.models.factory import random_components  # noqa: E402
from sfv_jax.pipeline import SFVPipeline  # noqa: E402

STAGES = ("image_encoder", "vae_encode", "unet", "vae_decode")


def bench(pipe, image, steps: int, args) -> dict:
    kwargs = dict(num_frames=args.num_frames, height=args.height, width=args.width, num_inference_steps=steps,
                  min_guidance_scale=1.0, max_guidance_scale=3.0 if steps > 1 else 1.0, seed=0)
    start = time.perf_counter()
    pipe(image, **kwargs)
    first = {"total_s": time.perf_counter() - start, **{s: dict(pipe.last_timings.get(s, {})) for s in STAGES}}
    runs = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        pipe(image, **kwargs)
        runs.append({"total_s": time.perf_counter() - start,
                     **{s: pipe.last_timings.get(s, {}).get("run_s", 0.0) for s in STAGES}})
    return {"steps": steps, "cfg": steps > 1, "first_call": first,
            "median": {k: float(np.median([r[k] for r in runs])) for k in runs[0]},
            "min": {k: float(np.min([r[k] for r in runs])) for k in runs[0]},
            "max": {k: float(np.max([r[k] for r in runs])) for k in runs[0]}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.py")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--num-frames", type=int, default=4)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 25])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()

    start = time.perf_counter()
    pipe = SFVPipeline(**random_components(load_config(args.config)))
    build_s = time.perf_counter() - start
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (args.height + 9, args.width + 5, 3),
                                                                 dtype=np.uint8))
    results = [bench(pipe, image, steps, args) for steps in args.steps]
    print(f"\n{args.config}, {args.num_frames}x{args.height}x{args.width}, random weights built in {build_s:.1f}s; "
          f"steady = median of {args.repeats} runs after a warm-up call\n")
    print("| steps | CFG | stage | compile s | steady s (min-max) |")
    print("|---|---|---|---|---|")
    for r in results:
        for stage in STAGES + ("total_s",):
            compile_s = r["first_call"][stage].get("compile_s", 0.0) if stage != "total_s" else r["first_call"]["total_s"]
            label = "end to end (first call incl. compile)" if stage == "total_s" else stage
            print(f"| {r['steps']} | {'yes' if r['cfg'] else 'no'} | {label} | {compile_s:.2f} | "
                  f"{r['median'][stage]:.3f} ({r['min'][stage]:.3f}-{r['max'][stage]:.3f}) |")
    if len(results) >= 2:
        one, many = results[0]["median"], results[-1]["median"]
        print(f"\nspeed-up of {results[0]['steps']} step over {results[-1]['steps']} steps: end to end "
              f"{many['total_s'] / one['total_s']:.1f}x, UNet stage {many['unet'] / one['unet']:.1f}x; "
              f"VAE decode share of the one-step time {one['vae_decode'] / one['total_s']:.0%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
