"""What the GPU check's sections share: the sizes of a full and a dry run, the chips' peak rates,
the result file each section writes as it goes, and how an out-of-memory failure reads."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from sfv_jax.bench import report

# Dense bf16 matrix peak of one chip, TFLOP/s, by the vendor's datasheet (the MFU denominator).
# Matched against jax's device_kind, longest name first. KINDS.md of the lending workplace measured
# ~790 TFLOP/s for an 8192^3 bf16 matmul on an H200: MFU is against the datasheet, not that.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "TPU v5p": 459.0,
    "TPU v5 lite": 197.0,
    "TPU v4": 275.0,
}


def peak_bf16_tflops(device_kind: str) -> float | None:
    """The table's peak for a jax device_kind such as 'NVIDIA H200'; None when not listed (CPUs)."""
    for name in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if name.lower() in device_kind.lower():
            return PEAK_BF16_TFLOPS[name]
    return None


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes, repeats and time budgets of one run of the check (full on a GPU, or the CPU dry run)."""

    # Parity: configs/tiny.py's three models at odd shapes (latent 9x13, 5 frames, 2 clips).
    parity_overrides: tuple[str, ...] = ()
    parity_batch: int = 2
    parity_frames: int = 5
    parity_height: int = 72
    parity_width: int = 104
    # Inference: one step of the pipeline.
    inference_config: str = "configs/svd_xt.py"
    inference_overrides: tuple[str, ...] = ()
    inference_frames: int = 14
    inference_height: int = 576
    inference_width: int = 1024
    inference_repeats: int = 5
    inference_warmup: int = 2
    # Train step: per-device micro-batches to try, largest first (each try compiles the step anew, a
    # minute or two at full size, so the list is short: --micro-batches 4,2,1 with a larger --budget).
    # Frames and size None: the config's (14 x 448x768).
    train_config: str = "configs/sfv_svd.py"
    train_micro_batches: tuple[int, ...] = (2, 1)
    train_frames: int | None = None
    train_height: int | None = None
    train_width: int | None = None
    train_overrides: tuple[str, ...] = ()
    train_repeats: int = 5
    # Convolutions: (layer kind, input shapes HxWxC) at SVD-XT's 14 frames: the UNet's levels at a 72x128
    # latent, then the VAE decoder's at 144x256 and 288x512.
    conv_frames: int = 14
    conv_shapes: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("spatial 3x3", ("9x16x1280", "18x32x1280", "36x64x640", "72x128x320", "144x256x512", "288x512x256")),
        ("temporal 3x1x1", ("9x16x1280", "18x32x1280", "36x64x640", "72x128x320")),
        ("upsample 2x + 3x3", ("9x16x1280", "18x32x1280", "36x64x640", "72x128x512", "144x256x512")),
    )
    conv_repeats: int = 10
    # Seconds each section may take (a child process killed at its budget); about 7 minutes in all.
    # Time a section leaves unused passes on to the next one.
    budgets: tuple[tuple[str, float], ...] = (("parity", 80.0), ("conv", 40.0), ("inference", 140.0),
                                              ("train", 140.0))


# configs/tiny.py cut to one cross-attention UNet block, a two-block VAE and a one-layer CLIP: every
# kind of layer once, compiled in seconds on a CPU.
MICRO_MODELS = ("unet.layers_per_block=1", "unet.block_out_channels=(32,)",
                "unet.down_block_types=('CrossAttnDownBlockSpatioTemporal',)",
                "unet.up_block_types=('CrossAttnUpBlockSpatioTemporal',)", "unet.num_attention_heads=(2,)",
                "vae.block_out_channels=(32,32)", "vae.down_block_types=('DownEncoderBlock2D','DownEncoderBlock2D')",
                "image_encoder.num_hidden_layers=1")

# The train step's UNet without attention blocks and without R1: its compile is the dry run's longest.
MICRO_TRAIN = ("unet.layers_per_block=1", "unet.block_out_channels=(32,)",
               "unet.down_block_types=('DownBlockSpatioTemporal',)", "unet.up_block_types=('UpBlockSpatioTemporal',)",
               "unet.num_attention_heads=(2,)", "sfv.r1_mode=off")

DRY_RUN = Plan(
    parity_overrides=MICRO_MODELS, parity_batch=1, parity_frames=3, parity_height=16, parity_width=24,
    inference_config="configs/tiny.py", inference_overrides=MICRO_MODELS, inference_frames=2, inference_height=16,
    inference_width=16, inference_repeats=2, inference_warmup=1,
    train_config="configs/tiny_sfv.py", train_overrides=MICRO_TRAIN, train_micro_batches=(1,),
    train_frames=2, train_height=16, train_width=16, train_repeats=1,
    conv_frames=2,
    conv_shapes=(("spatial 3x3", ("8x8x32",)), ("temporal 3x1x1", ("4x4x32",)), ("upsample 2x + 3x3", ("4x4x32",))),
    conv_repeats=2,
    budgets=(("parity", 120.0), ("conv", 60.0), ("inference", 120.0), ("train", 120.0)),
)

SECTIONS = tuple(name for name, _ in Plan.budgets)


def plan_for(dry_run: bool) -> Plan:
    return DRY_RUN if dry_run else Plan()


class Recorder:
    """A section's results, rewritten to its JSON file after every update, so that a section killed
    at its time budget still leaves what it measured before."""

    def __init__(self, path: str):
        self.path = path
        self.data: dict[str, Any] = {}
        self.started = time.perf_counter()

    def set(self, key: str, value: Any) -> Any:
        self.data[key] = value
        self.data["elapsed_s"] = round(time.perf_counter() - self.started, 2)
        report.write_json(self.path, self.data)
        return value


OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OutOfMemory")


def is_oom(error: str | None) -> bool:
    """Whether an error text is the device running out of memory (XLA's or CUDA's wording)."""
    return bool(error) and any(marker in error for marker in OOM_MARKERS)
