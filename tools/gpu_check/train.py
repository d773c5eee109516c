"""Section "train": the SF-V train step of the paper config (configs/sfv_svd.py: 14 frames at 448x768,
bf16 compute, float32 master weights, remat dots_no_batch, exact R1) on one device at one per-device
micro-batch, through sfv_jax.bench.train.run: step time, FLOP/s from the compiled step's cost analysis,
MFU against the chip's bf16 peak (common.PEAK_BF16_TFLOPS), XLA's memory estimate and the device's
peak memory.

One micro-batch per step (grad_accum_steps 1), so the FLOP count is exact (no scan body counted once)
and a step is one micro-step. The driver runs this once per micro-batch in Plan.train_micro_batches,
largest first, each in a fresh process, until one does not run out of memory.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from tools.gpu_check.common import Plan, Recorder, peak_bf16_tflops


def run(plan: Plan, rec: Recorder, micro_batch: int, overrides: Sequence[str] = ()) -> None:
    """One timed train step at `micro_batch` clips, with config `overrides` on top of the plan's."""
    import jax
    from sfv_jax.bench import train

    peak = peak_bf16_tflops(jax.devices()[0].device_kind)
    args = argparse.Namespace(config=plan.train_config, override=[*plan.train_overrides, *overrides],
                              batch=micro_batch, grad_accum=1, num_frames=plan.train_frames, height=plan.train_height,
                              width=plan.train_width, dtype=None, peak_tflops=peak, repeats=plan.train_repeats,
                              warmup=1, json=None)
    rec.set("setup", {"config": plan.train_config, "overrides": args.override, "micro_batch": micro_batch,
                      "device": jax.devices()[0].device_kind, "peak_bf16_tflops": peak})
    payload = train.run(args)
    r = payload["result"]
    rec.set("config", payload["config"])
    rec.set("result", {
        "step_s": r["step_seconds"]["median"], "step_seconds": r["step_seconds"], "compile_s": r["compile_s"],
        "clips_per_s": r["clips_per_s"], "flops_per_step": r["flops_per_step"], "flops_per_s": r["flops_per_s"],
        "mfu": r["mfu"], "device_peak_bytes": r["device_peak_bytes"],
        "xla_estimated_peak_bytes": (r["memory"] or {}).get("estimated_peak_bytes"),
        "state_bytes": r["state_bytes"], "g_params": r["g_params"], "final_metrics": r["final_metrics"],
        # the step as two programs (the default) or one: --train-override step_programs=fused compares
        "step_programs": r["step_programs"],
        "programs": [{k: p[k] for k in ("name", "compile_s", "flops")} for p in r["programs"]]})
