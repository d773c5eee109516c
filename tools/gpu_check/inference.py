"""Section "inference": one-step SF-V inference of full-size SVD-XT (configs/svd_xt.py) at 14 x 576x1024,
bf16 params and compute, random weights, through sfv_jax.bench.inference.measure: compile and steady
seconds per stage (CLIP, VAE encode, UNet, VAE decode) and end to end, with the UNet's attention by XLA
and then by cuDNN (the same weights; the VAE and CLIP keep XLA attention: the VAE's single 512-wide
head is past cuDNN's head size). The second pipeline reuses the first's compiled VAE and CLIP programs
(the pipeline caches them by module structure), so only its UNet compiles again.
"""

from __future__ import annotations

import argparse

from tools.gpu_check.common import Plan, Recorder


def set_attention(module, implementation: str) -> None:
    """Sets the attention kernel of every attention layer inside `module` (a static attribute: the
    next nnx.split gives a new graph, so jitted programs compile again for it)."""
    from flax import nnx
    from sfv_jax.models.attention import Attention
    for _, node in nnx.iter_graph(module):
        if isinstance(node, Attention):
            node.implementation = implementation


def run(plan: Plan, rec: Recorder) -> None:
    import jax
    from sfv_jax.bench import inference
    from sfv_jax.config import load_config
    from sfv_jax.demo import synthetic_image
    from sfv_jax.bench.train import device_peak_bytes
    from sfv_jax.models.factory import random_components
    from sfv_jax.pipeline import SFVPipeline

    config = load_config(plan.inference_config, plan.inference_overrides)
    modules = random_components(config, seed=config.seed, options=inference.model_options(config, "bfloat16"))
    args = argparse.Namespace(num_frames=plan.inference_frames, height=plan.inference_height,
                              width=plan.inference_width, decode_chunk_size=None, repeats=plan.inference_repeats,
                              repeats_many=None, warmup=plan.inference_warmup)
    rec.set("setup", {"config": plan.inference_config, "overrides": list(plan.inference_overrides),
                      "frames": args.num_frames, "height": args.height, "width": args.width, "dtype": "bfloat16",
                      "steps": 1, "repeats": args.repeats, "warmup": args.warmup})
    image = synthetic_image(args.height, args.width, seed=0)
    gpu = jax.default_backend() == "gpu"
    runs: dict[str, dict] = {}
    for implementation in ("xla", "cudnn"):
        if implementation == "cudnn" and not gpu:
            runs[implementation] = {"skipped": "cuDNN attention needs an NVIDIA GPU"}
            rec.set("unet_attention", runs)
            continue
        set_attention(modules["unet"], implementation)
        pipe = SFVPipeline(**modules)
        try:
            runs[implementation] = stage_table(inference.measure(pipe, image, 1, args))
        except Exception as e:  # noqa: BLE001 - one kernel failing leaves the other's numbers
            runs[implementation] = {"error": f"{type(e).__name__}: {e}"[:2000]}
        del pipe
        rec.set("unet_attention", runs)
        timed = {name: r for name, r in runs.items() if "end_to_end_s" in r}
        if timed:  # the best so far: a section killed at its budget keeps it
            best = min(timed, key=lambda name: timed[name]["end_to_end_s"])
            rec.set("best_attention", best)
            rec.set("best", timed[best])
        rec.set("device_peak_bytes", device_peak_bytes())
    if "best" not in rec.data:
        raise RuntimeError("no attention implementation ran: " + "; ".join(
            f"{name}: {r.get('error') or r.get('skipped')}" for name, r in runs.items()))


def stage_table(result: dict) -> dict:
    """measure()'s result reduced to what the check reports: seconds (median) and compile seconds per
    stage, FLOP/s, and the full statistics."""
    seconds = result["seconds"]
    stages = {}
    for stage, stats in seconds.items():
        flops = result["flops"].get(stage)
        stages[stage] = {"steady_s": stats["median"], "min_s": stats["min"], "max_s": stats["max"],
                         "compile_s": result["compile_s"].get(stage),
                         "flops": flops, "flops_per_s": flops / stats["median"] if flops and stats["median"] else None}
    return {"end_to_end_s": seconds["total"]["median"], "unet_s": seconds["unet"]["median"],
            "first_call_s": result["first_call_s"], "stages": stages, "repeats": result["repeats"]}
