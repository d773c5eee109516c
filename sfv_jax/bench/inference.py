"""`sfv-jax bench inference`: one-step SF-V vs multi-step SVD with CFG, end to end and per stage.

Random weights at any model size (configs/tiny.py, configs/svd_xt.py, ...), one resolution, frame
count and dtype. Every stage is timed apart from its compilation (SFVPipeline.last_timings), and its
FLOPs come from XLA's cost analysis of the compiled program the pipeline ran.

Loops in cost analysis: XLA's HloCostAnalysis counts a while loop's body ONCE, whatever the trip
count (checked on CPU: a fori_loop of 5 matmuls reports the FLOPs of one; tests/test_bench.py keeps
checking it). The sampler runs its steps in one fori_loop, so the UNet stage's FLOPs are
steps x the program's FLOPs (the few element-wise ops outside the loop are over-counted with it);
the VAE decode scans over clips/chunks, so its FLOPs are chunks x the program's when the chunks are
equal (otherwise they are not reported).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from sfv_jax.bench import report
from sfv_jax.diffusion.image_to_video import STAGES
from sfv_jax.errors import SfvError

DTYPES = ("float32", "bfloat16")


def add_arguments(p) -> None:
    p.add_argument("--config", default="configs/tiny.py", help="model widths: configs/tiny.py, configs/svd_xt.py, ...")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. unet.block_out_channels=(32,) (repeatable)")
    p.add_argument("--height", type=int, default=64,
                   help="image height (a multiple of the VAE's downsampling f; latent = height / f)")
    p.add_argument("--width", type=int, default=64, help="image width (a multiple of f)")
    p.add_argument("--num-frames", type=int, default=4)
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="params and compute dtype")
    p.add_argument("--steps", default="1,25", help="comma-separated step counts; > 1 uses CFG (max guidance 3)")
    p.add_argument("--decode-chunk-size", type=int, default=None, help="frames per VAE decode chunk (default: all)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per step count")
    p.add_argument("--repeats-many", type=int, default=None,
                   help="timed runs of the step counts > 1 (default: --repeats); full-width 25-step runs take long")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (>= 1: the first compiles)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="write the results here")


def model_options(config, dtype: str):
    """The config's ModelOptions with params and compute in `dtype` (inference: no float32 master copy)."""
    import dataclasses
    from sfv_jax.models import ModelOptions
    return dataclasses.replace(ModelOptions(**config.model.to_dict()), param_dtype=dtype, dtype=dtype)


def parse_steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SfvError(f"--steps must be comma-separated integers such as 1,25, got {text!r}") from None
    if not steps or min(steps) < 1:
        raise SfvError(f"--steps must list step counts >= 1, got {text!r}")
    return steps


def latent_scale(config) -> int:
    """Image pixels per latent pixel: 8 for SVD's four-block VAE."""
    from sfv_jax.models.vae import downsampling_factor
    return downsampling_factor(config.vae.block_out_channels)


def check_size(height: int, width: int, num_frames: int, scale: int = 8) -> None:
    if height < scale or width < scale or height % scale or width % scale:
        raise SfvError(f"--height and --width must be positive multiples of {scale} (the VAE's scale), "
                       f"got {height}x{width}")
    if num_frames < 1:
        raise SfvError(f"--num-frames must be >= 1, got {num_frames}")


def flops_of(compiled) -> float | None:
    """XLA's FLOP count of a compiled program (None when the backend reports none)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax returned one dict per device program
        cost = cost[0] if cost else None
    value = (cost or {}).get("flops")
    return float(value) if value is not None and value >= 0 else None


def _image(height: int, width: int, seed: int = 0):
    import PIL.Image
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def measure(pipe, image, steps: int, args) -> dict[str, Any]:
    """Warm-up call(s) (the first compiles), then timed calls; per-stage and end-to-end seconds.

    Warm-up calls of a multi-step count run 2 steps: the Euler sampler is one compiled program for
    every step count (the count is a traced loop bound), so they compile and warm exactly the
    programs the timed calls run, without 23 more UNet calls each.
    """
    kwargs = dict(num_frames=args.num_frames, height=args.height, width=args.width, num_inference_steps=steps,
                  decode_chunk_size=args.decode_chunk_size, seed=0)
    repeats = args.repeats if steps == 1 or args.repeats_many is None else args.repeats_many
    compile_s: dict[str, float] = {}
    first_total = None
    warm_steps = min(steps, 2)
    report.log(f"{steps} step{'s' if steps > 1 else ''}: {args.warmup} warm-up call(s) of {warm_steps} step(s), "
               f"the first compiles")
    for i in range(args.warmup):
        start = time.perf_counter()
        pipe(image, **{**kwargs, "num_inference_steps": warm_steps})
        if i == 0:
            first_total = time.perf_counter() - start
            compile_s = {s: pipe.last_timings[s]["compile_s"] for s in STAGES}
    runs = []
    report.log(f"{steps} step{'s' if steps > 1 else ''}: {repeats} timed call(s)")
    load = [report.load_average()]
    for _ in range(repeats):
        start = time.perf_counter()
        pipe(image, **kwargs)
        total = time.perf_counter() - start
        run = {s: pipe.last_timings[s]["run_s"] for s in STAGES}
        run["host"] = total - sum(run.values())
        run["total"] = total
        runs.append(run)

    load.append(report.load_average())
    use_cfg = steps > 1  # the pipeline's rule with max_guidance_scale 3 (SF-V's one step runs unguided)
    unet_batch = 2 if use_cfg else 1
    n_frames = args.num_frames
    chunk = n_frames if args.decode_chunk_size is None else min(args.decode_chunk_size, n_frames)
    full, rest = divmod(n_frames, chunk)
    flops = {}
    for stage in STAGES:
        program_flops = flops_of(pipe.last_compiled[stage])
        multiplier = {"unet": steps, "vae_decode": full if not rest else None}.get(stage, 1)
        flops[stage] = None if program_flops is None or multiplier is None else program_flops * multiplier
    known = [flops[s] for s in STAGES]
    flops["total"] = sum(known) if all(v is not None for v in known) else None
    stats = {key: report.summarize([r[key] for r in runs]) for key in runs[0]}
    return {"steps": steps, "cfg": use_cfg, "unet_evaluations": steps * unet_batch, "unet_batch": unet_batch,
            "unet_calls": steps, "first_call_s": first_total, "compile_s": compile_s, "flops": flops,
            "unet_flops_per_evaluation": (flops["unet"] / (steps * unet_batch)) if flops["unet"] else None,
            "seconds": stats, "runs": runs, "repeats": repeats, "warmup_steps": warm_steps,
            "load_average_1m": load}


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One step vs the most steps: UNet-stage and end-to-end speed-up, FLOP bound, decoder share."""
    one = next((r for r in results if r["steps"] == 1), None)
    many = max(results, key=lambda r: r["steps"])
    out: dict[str, Any] = {}
    if one is not None:
        t1 = one["seconds"]
        out["one_step_decoder_share"] = t1["vae_decode"]["median"] / t1["total"]["median"]
        out["one_step_unet_share"] = t1["unet"]["median"] / t1["total"]["median"]
    if one is None or many is one:
        return out
    t1, tn = one["seconds"], many["seconds"]
    out["compared"] = [1, many["steps"]]
    out["unet_speedup"] = tn["unet"]["median"] / t1["unet"]["median"]
    if one["flops"]["unet"] and many["flops"]["unet"]:
        out["unet_flop_ratio"] = many["flops"]["unet"] / one["flops"]["unet"]
    out["end_to_end_speedup"] = tn["total"]["median"] / t1["total"]["median"]
    if one["flops"]["total"] and many["flops"]["total"]:
        out["flop_bound"] = many["flops"]["total"] / one["flops"]["total"]
        out["fraction_of_flop_bound"] = out["end_to_end_speedup"] / out["flop_bound"]
    return out


def run(args) -> dict[str, Any]:
    from sfv_jax.config import load_config
    from sfv_jax.models.factory import random_components

    steps_list = parse_steps(args.steps)
    report.check_counts(args.repeats, args.warmup)
    if args.repeats_many is not None:
        report.check_counts(args.repeats_many, args.warmup)
    if args.decode_chunk_size is not None and args.decode_chunk_size < 1:
        raise SfvError(f"--decode-chunk-size must be >= 1, got {args.decode_chunk_size}")
    config = load_config(args.config, args.override)
    scale = latent_scale(config)
    check_size(args.height, args.width, args.num_frames, scale)
    machine = report.machine()
    report.log(f"building random weights from {args.config}")
    start = time.perf_counter()
    modules = random_components(config, seed=config.seed, options=model_options(config, args.dtype))
    build_s = time.perf_counter() - start
    params = {name: _param_count(m) for name, m in modules.items()}
    from sfv_jax.pipeline import SFVPipeline
    pipe = SFVPipeline(**modules)
    del modules
    image = _image(args.height, args.width)
    results = [measure(pipe, image, steps, args) for steps in steps_list]
    payload = {
        "benchmark": "inference", "machine": machine, "args": vars_of(args), "params": params,
        "build_s": build_s, "latent": [args.num_frames, args.height // scale, args.width // scale],
        "results": results, "summary": summary(results), "peak_rss_bytes": report.peak_rss_bytes(),
    }
    print(format_report(payload))
    report.write_json(args.json, payload)
    return payload


def vars_of(args) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if not callable(v)}


def _param_count(module) -> int:
    import jax
    from flax import nnx
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param))))


def _first_call(r: dict[str, Any]) -> str:
    warm = r.get("warmup_steps", r["steps"])
    return " (first call)" if warm == r["steps"] else f" (first call, {_plural(warm, 'step')})"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def format_report(payload: dict[str, Any]) -> str:
    a = payload["args"]
    lines = [f"sfv-jax bench inference: {a['config']} {' '.join(a['override'])}".rstrip() +
             f", {a['num_frames']} frames x {a['height']}x{a['width']} (latent {payload['latent'][1]}x"
             f"{payload['latent'][2]}), {a['dtype']}, batch 1, random weights",
             "params: " + ", ".join(f"{k} {v:,}" for k, v in payload["params"].items()),
             "machine: " + report.describe_machine(payload["machine"]),
             "steady: " + report.repeats_note(min(r["repeats"] for r in payload["results"]), a["warmup"])
             + (f" (step count 1: {a['repeats']} runs)" if a.get("repeats_many") not in (None, a["repeats"]) else "")
             + "; compile: seconds compiling in the first call; FLOPs: XLA cost analysis (loop bodies x trip count)"
             + "; host = end to end - the four stages", ""]
    rows = []
    for r in payload["results"]:
        total = r["seconds"]["total"]["median"]
        for stage in STAGES + ("host", "total"):
            label = {"unet": f"unet ({_plural(r['unet_evaluations'], 'evaluation')} as "
                             f"{_plural(r['unet_calls'], 'call')} at batch {r['unet_batch']})",
                     "host": "host (resize, noise, transfers)", "total": "end to end"}.get(stage, stage)
            compile_s = r["first_call_s"] if stage == "total" else r["compile_s"].get(stage)
            flops = r["flops"].get(stage)
            secs = r["seconds"][stage]
            rate = flops / secs["median"] if flops and secs["median"] > 0 else None
            rows.append([r["steps"], "yes" if r["cfg"] else "no", label,
                         "-" if compile_s is None else f"{compile_s:.2f}" + (_first_call(r) if stage == "total" else ""),
                         report.fmt_seconds(secs), f"{secs['median'] / total:.0%}",
                         report.fmt_number(flops), report.fmt_number(rate)])
    lines.append(report.markdown_table(
        ["steps", "CFG", "stage", "compile s", "steady s", "share", "FLOPs", "FLOP/s"], rows))
    s = payload["summary"]
    lines.append("")
    if "unet_speedup" in s:
        n = s["compared"][1]
        ideal = f" (FLOP ratio {s['unet_flop_ratio']:.1f}x)" if s.get("unet_flop_ratio") else ""
        lines.append(f"UNet stage, 1 step vs {n} steps with CFG: {s['unet_speedup']:.1f}x faster{ideal}")
        line = f"end to end, 1 step vs {n} steps with CFG: {s['end_to_end_speedup']:.2f}x faster"
        if "flop_bound" in s:
            line += (f"; FLOP bound {s['flop_bound']:.2f}x; reached {s['fraction_of_flop_bound']:.0%} of it")
        lines.append(line)
    if "one_step_decoder_share" in s:
        lines.append(f"one step: VAE decode {s['one_step_decoder_share']:.0%} of the end-to-end time, "
                     f"UNet {s['one_step_unet_share']:.0%}")
    lines.append(f"peak RSS {payload['peak_rss_bytes'] / 2 ** 30:.2f} GiB; random weights built in "
                 f"{payload['build_s']:.1f}s")
    return "\n".join(lines)
