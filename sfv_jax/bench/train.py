"""`sfv-jax bench train`: the SF-V train step (generator + discriminator-head update) on random weights.

Step time, clips/s, achieved FLOP/s from XLA's cost analysis of the compiled step, MFU against a
peak given with --peak-tflops, and memory (XLA's memory analysis of the compiled step, the device's
peak where the backend reports one, and the process's peak RSS).

The step is jitted exactly as training jits it (sfv_jax.parallel.sharding.jit_train_step: explicit
shardings over the config's mesh, state donated, one or two programs as config.step_programs says).
FLOPs: XLA counts a loop body once; the step's micro-batch accumulation is a lax.scan unless unrolled, so
with grad_accum_steps = M > 1 scanned the gradients program's FLOPs count M times (fused: the whole
program's, which also counts the optimizer update M times, a small over-count); otherwise they are exact
(sfv_jax.train.accumulate.scanned_runs_per_step).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from sfv_jax.bench import report
from sfv_jax.bench.inference import flops_of, latent_scale, vars_of
from sfv_jax.errors import SfvError


def add_arguments(p) -> None:
    p.add_argument("--config", default="configs/tiny_sfv.py", help="an SF-V train config (configs/tiny_sfv.py, ...)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. sfv.r1_mode=approx (repeatable)")
    p.add_argument("--batch", type=int, default=None, help="global batch (default: config.global_batch_size)")
    p.add_argument("--grad-accum", type=int, default=None, help="micro-batches per step (default: the config's)")
    p.add_argument("--num-frames", type=int, default=None, help="frames per clip (default: config.data.num_frames)")
    p.add_argument("--height", type=int, default=None,
                   help="image height, a multiple of the VAE's downsampling (default: config.data)")
    p.add_argument("--width", type=int, default=None,
                   help="image width, a multiple of the VAE's downsampling (default: config.data)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                   help="compute dtype (default: config.model.dtype); params stay in config.model.param_dtype")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak TFLOP/s of all devices used together, for MFU (e.g. 989 for one H100 SXM in bf16)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", default=None, metavar="OUT.json")


def _overrides(args) -> list[str]:
    extra = []
    for flag, key in (("batch", "global_batch_size"), ("grad_accum", "grad_accum_steps"),
                      ("num_frames", "data.num_frames"), ("height", "data.height"), ("width", "data.width"),
                      ("dtype", "model.dtype")):
        value = getattr(args, flag)
        if value is not None:
            extra.append(f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}")
    return list(args.override) + extra


def random_batch(config, seed: int = 0) -> dict[str, np.ndarray]:
    """latents (B,T,h,w,4) at the data scale, image_latent (B,h,w,4), clip (B,1,D), added_time_ids (B,3)."""
    rng = np.random.default_rng(seed)
    b, t = config.global_batch_size, config.data.num_frames
    f = latent_scale(config)
    h, w = config.data.height // f, config.data.width // f
    sfv = config.sfv
    return dict(latents=(0.5 * rng.standard_normal((b, t, h, w, 4))).astype(np.float32),
                image_latent=rng.standard_normal((b, h, w, 4)).astype(np.float32),
                clip=rng.standard_normal((b, 1, config.unet.cross_attention_dim)).astype(np.float32),
                added_time_ids=np.tile(np.array([[sfv.fps - 1, sfv.motion_bucket_id, sfv.noise_aug_strength]],
                                                np.float32), (b, 1)))


def _memory(compiled) -> dict[str, int] | None:
    mem = compiled.memory_analysis()
    if mem is None:
        return None
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes")
    out = {f: int(getattr(mem, f)) for f in fields}
    # Live at once at the step's peak: inputs, outputs not aliased to (donated) inputs, and temporaries.
    out["estimated_peak_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                                   - out["alias_size_in_bytes"] + out["temp_size_in_bytes"])
    return out


def device_peak_bytes() -> int | None:
    import jax
    stats = jax.devices()[0].memory_stats()  # None on CPU
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def run(args) -> dict[str, Any]:
    import jax
    from sfv_jax.config import load_config
    from sfv_jax.parallel.mesh import make_mesh
    from sfv_jax.parallel.sharding import jit_train_step
    from sfv_jax.parallel.step_programs import run_compiled, step_programs
    from sfv_jax.train.accumulate import scanned_runs_per_step
    from sfv_jax.train.state import SFVModels, abstract_state, new_state, tree_bytes
    from sfv_jax.train.step import make_train_step

    report.check_counts(args.repeats, args.warmup)
    for flag in ("batch", "grad_accum", "num_frames"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise SfvError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        raise SfvError(f"--peak-tflops must be > 0, got {args.peak_tflops}")
    config = load_config(args.config, _overrides(args))
    if "sfv" not in config or "global_batch_size" not in config:
        raise SfvError(f"{args.config} is not an SF-V train config (no sfv / global_batch_size); "
                       f"use e.g. configs/tiny_sfv.py")
    b, m = config.global_batch_size, config.grad_accum_steps
    if b % m:
        raise SfvError(f"global batch {b} does not split into {m} micro-batches; change --batch or --grad-accum")
    f = latent_scale(config)
    if config.data.height % f or config.data.width % f:
        raise SfvError(f"height and width must be multiples of the VAE's downsampling {f}, "
                       f"got {config.data.height}x{config.data.width}")
    machine = report.machine()

    models = SFVModels(config)
    mesh = make_mesh(config.mesh)
    host_batch = random_batch(config)
    abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in host_batch.items()}
    with jax.set_mesh(mesh):
        abstract = abstract_state(models)
        programs = step_programs(config)
        step, state_sh, batch_sh = jit_train_step(make_train_step(config, models, batch_axes=("data", "fsdp")),
                                                  abstract, abstract_batch, mesh, config.sharding, programs)
        report.log(f"compiling the train step ({programs}: sfv_jax.parallel.step_programs)")
        start = time.perf_counter()
        compiled_programs = step.compile(abstract, abstract_batch)
        compile_s = time.perf_counter() - start
        compiled = run_compiled(compiled_programs)
        state = jax.device_put(new_state(config, models), state_sh)
        batch = jax.device_put(host_batch, batch_sh)
        holder = [state]

        def one_step():
            new, metrics = compiled(holder[0], batch)
            holder[0] = new
            return jax.block_until_ready(metrics)

        report.log(f"{args.warmup} warm-up step(s), then {args.repeats} timed")
        seconds, metrics = report.time_calls(one_step, args.repeats, args.warmup)
    flops_each = [flops_of(p.compiled) for p in compiled_programs]
    program_flops = None if None in flops_each else sum(flops_each)
    # The micro-batches run in the first program (the gradients; fused, the whole step), whose scan body XLA counts
    # once.
    flops = None if program_flops is None else flops_each[0] * scanned_runs_per_step(config) + sum(flops_each[1:])
    memories = [_memory(p.compiled) for p in compiled_programs]
    # The programs run one after the other: the step's peak is the larger one's.
    memory = None if None in memories else max(memories, key=lambda mem: mem["estimated_peak_bytes"])
    stats = report.summarize(seconds)
    flops_per_s = flops / stats["median"] if flops else None
    result = {
        "step_seconds": stats, "runs": seconds, "compile_s": compile_s,
        "clips_per_s": b / stats["median"], "flops_per_step": flops, "program_flops": program_flops,
        "flops_per_s": flops_per_s,
        "mfu": flops_per_s / (args.peak_tflops * 1e12) if flops_per_s and args.peak_tflops else None,
        "memory": memory, "device_peak_bytes": device_peak_bytes(), "step_programs": programs,
        "programs": [dict(name=p.name, compile_s=p.compile_s, flops=f, memory=mem)
                     for p, f, mem in zip(compiled_programs, flops_each, memories)],
        "state_bytes": tree_bytes(abstract), "g_params": int(sum(x.size for x in jax.tree.leaves(abstract.g_params))),
        "final_metrics": {k: float(v) for k, v in metrics.items()},
    }
    payload = {"benchmark": "train", "machine": machine, "args": vars_of(args),
               "config": {"global_batch_size": b, "grad_accum_steps": m, "num_frames": config.data.num_frames,
                          "latent": [config.data.height // f, config.data.width // f],
                          "dtype": config.model.dtype, "param_dtype": config.model.param_dtype,
                          "remat": config.model.remat, "r1_mode": config.sfv.r1_mode,
                          "mesh": dict(zip(mesh.axis_names, map(int, mesh.devices.shape)))},
               "result": result, "peak_rss_bytes": report.peak_rss_bytes()}
    print(format_report(payload))
    report.write_json(args.json, payload)
    return payload


def format_report(payload: dict[str, Any]) -> str:
    a, c, r = payload["args"], payload["config"], payload["result"]
    gib = lambda n: "-" if n is None else f"{n / 2 ** 30:.3f}"
    mem = r["memory"] or {}
    lines = [f"sfv-jax bench train: {a['config']} {' '.join(_overrides_text(a))}".rstrip(),
             f"global batch {c['global_batch_size']} as {c['grad_accum_steps']} micro-batch"
             f"{'es' if c['grad_accum_steps'] > 1 else ''}, {c['num_frames']} frames, latent "
             f"{c['latent'][0]}x{c['latent'][1]}, compute {c['dtype']}, params {c['param_dtype']}, remat "
             f"{c['remat']}, R1 {c['r1_mode']}, mesh {c['mesh']}; G params {r['g_params']:,}, "
             f"state {gib(r['state_bytes'])} GiB",
             "machine: " + report.describe_machine(payload["machine"]),
             "step: " + report.repeats_note(a["repeats"], a["warmup"]) + "; FLOPs from XLA's cost analysis"
             + (" (x micro-batches: the scan body is counted once)" if c["grad_accum_steps"] > 1 else ""), ""]
    rows = [["step s", report.fmt_seconds(r["step_seconds"])],
            ["compile s", f"{r['compile_s']:.1f}" + (" (" + ", ".join(f"{p['name']} {p['compile_s']:.1f}"
                                                                  for p in r["programs"]) + ")"
                                                       if len(r.get("programs", ())) > 1 else "")],
            ["clips/s", f"{r['clips_per_s']:.3g}"],
            ["FLOPs per step", report.fmt_number(r["flops_per_step"])],
            ["achieved FLOP/s", report.fmt_number(r["flops_per_s"])],
            ["MFU", f"{r['mfu']:.1%} of {a['peak_tflops']} TFLOP/s" if r["mfu"] is not None else
             "- (pass --peak-tflops)"],
            ["peak memory, XLA estimate GiB (args + outputs - donated + temps; the larger program)",
             gib(mem.get("estimated_peak_bytes"))],
            ["  temporaries GiB", gib(mem.get("temp_size_in_bytes"))],
            ["device peak GiB (backend's memory_stats)", gib(r["device_peak_bytes"])],
            ["process peak RSS GiB", gib(payload["peak_rss_bytes"])]]
    lines.append(report.markdown_table(["measure", "value"], rows))
    return "\n".join(lines)


def _overrides_text(a: dict) -> list[str]:
    return list(a.get("override") or [])
