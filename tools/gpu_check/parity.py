"""Section "parity": configs/tiny.py's UNet, VAE (encode, decode) and CLIP against diffusers/transformers,
both on the check's device (the GPU's torch and jax; the CPU in a dry run), random weights through the
real converter, as tests/test_unet_parity.py, tests/test_vae.py and tests/test_clip.py do on the CPU.

Per component:
- float32 at full precision on both sides (torch's TF32 off, jax's matmul precision "highest"): rel L2
  against torch within FLOAT32_BOUND, the CPU tests' ceiling;
- float32 at jax's default precision (GPU only: there XLA may use TF32 for float32 matmuls and
  convolutions), reported without a bound: what a user gets who sets nothing;
- bf16 compute (float32 params) with cuDNN attention on a GPU (XLA attention on the CPU) against the
  float32 output, within BF16_BOUND (tests/test_unet_parity.py::test_bf16_close_to_float32's bound).
"""

from __future__ import annotations

import argparse
import os
import tempfile

from tools.gpu_check.common import Plan, Recorder

FLOAT32_BOUND = 1e-4
BF16_BOUND = 2e-2
# Seeds of the weight perturbation per model folder (any fixed values).
SEEDS = {"unet": 4, "vae": 1, "image_encoder": 3}


def strict_float32_torch(torch) -> dict[str, str]:
    """Turns torch's TF32 off for float32 matmuls and convolutions (cuDNN convolutions default to TF32);
    returns the settings now in force."""
    cudnn_conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
    if cudnn_conv is not None:  # torch >= 2.9's API; mixing it with the older flags is an error there
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        return {"matmul": torch.backends.cuda.matmul.fp32_precision,
                "cudnn_conv": torch.backends.cudnn.conv.fp32_precision}
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return {"matmul_allow_tf32": str(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_allow_tf32": str(torch.backends.cudnn.allow_tf32)}


def run(plan: Plan, rec: Recorder) -> None:
    import jax
    import torch
    from sfv_jax.bench import vs_torch
    from sfv_jax.config import load_config
    from sfv_jax.models import ModelOptions
    from tests.reference import randomize_

    gpu = jax.default_backend() == "gpu"
    if gpu and not torch.cuda.is_available():
        raise RuntimeError("jax runs on a GPU but torch sees none: the two would not run on the same device")
    device = "cuda" if gpu else "cpu"
    attention = "cudnn" if gpu else "xla"
    rec.set("device", {"torch": device, "jax": jax.default_backend()})
    rec.set("torch_float32", strict_float32_torch(torch))
    rec.set("bf16_attention", attention)
    rec.set("setup", {"config": "configs/tiny.py", "overrides": list(plan.parity_overrides), "batch": plan.parity_batch,
                      "frames": plan.parity_frames, "height": plan.parity_height, "width": plan.parity_width})
    rec.set("bounds", {"float32": FLOAT32_BOUND, "bf16_vs_float32": BF16_BOUND})
    config = load_config("configs/tiny.py", plan.parity_overrides)
    args = argparse.Namespace(batch=plan.parity_batch, num_frames=plan.parity_frames, height=plan.parity_height,
                              width=plan.parity_width, repeats=1, warmup=1, profile=False)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="sfv_gpu_check_parity_") as workdir:
        for folder_name in dict.fromkeys(vs_torch.FOLDER.values()):
            folder = os.path.join(workdir, folder_name)
            model = vs_torch.build_torch(folder_name, config, folder, torch.float32)
            randomize_(model, SEEDS[folder_name])  # no norm scale or mix factor left at its trivial init
            model.save_pretrained(folder, safe_serialization=True)
            model = model.to(device)
            float32 = vs_torch.load_jax(folder_name, folder, ModelOptions())
            bf16 = vs_torch.load_jax(folder_name, folder, ModelOptions(dtype="bfloat16", attention=attention))
            for component in (c for c in vs_torch.COMPONENTS if vs_torch.FOLDER[c] == folder_name):
                results[component] = {}
                compare(component, model, float32, bf16, config, args, device, gpu, results[component],
                        lambda: rec.set("components", results))
            del model, float32, bf16
    rec.set("ok", all(r["ok"] for r in results.values()))


def compare(component: str, torch_model, float32, bf16, config, args, device: str, gpu: bool, entry: dict,
            record) -> None:
    """Fills `entry` with the errors of one component: float32 vs torch (strict, then default precision),
    bf16 vs float32; calls `record()` once the bounded ones are in and again at the end."""
    import jax
    import torch
    from sfv_jax.bench import vs_torch

    inputs = vs_torch.make_inputs(component, config, args)
    _, reference = vs_torch.run_torch(component, torch_model, inputs, args, torch.float32, device)
    with jax.default_matmul_precision("highest"):
        timing, out32 = vs_torch.run_jax(component, float32, inputs, args, "float32")
    entry.update(shape=list(out32.shape), rel_l2_float32=vs_torch.rel_l2(out32, reference),
                 jax_float32_s=timing["seconds"]["median"], jax_float32_compile_s=timing["compile_s"])
    timing, out16 = vs_torch.run_jax(component, bf16, inputs, args, "float32")
    entry.update(rel_l2_bf16_vs_float32=vs_torch.rel_l2(out16, out32), jax_bf16_s=timing["seconds"]["median"],
                 jax_bf16_compile_s=timing["compile_s"])
    entry["ok"] = entry["rel_l2_float32"] <= FLOAT32_BOUND and entry["rel_l2_bf16_vs_float32"] <= BF16_BOUND
    record()
    if gpu:  # last: it has no bound, so a section out of time loses it first
        _, out_default = vs_torch.run_jax(component, float32, inputs, args, "float32")
        entry["rel_l2_float32_default_precision"] = vs_torch.rel_l2(out_default, reference)
        record()
