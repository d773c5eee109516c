"""XLA's direct convolution vs the same convolution as one im2col matmul, at SVD's shapes.

Prints a markdown table of seconds (median of --repeats after a warm-up) and GFLOP/s for each
shape and both paths, plus the path sfv_jax.models.layers.Conv picks. This is the measurement
behind conv_paths.MATMUL_CONV_MAX_POSITIONS; rerun it on a new CPU before changing that threshold.

    python tools/bench_conv.py                      # the UNet's 3x3 / temporal shapes at a 16x16 latent
    python tools/bench_conv.py --frames 14 --shape 4x4x1280 --shape 72x128x320
"""

from __future__ import annotations

import argparse
import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sfv_jax.bench.report import time_calls
from sfv_jax.models.conv_paths import conv_channels_last, conv_method
from sfv_jax.models.layers import TORCH_DEFAULT_INIT, Conv

# (height x width x channels) of the UNet's 3x3 convolutions at a 16x16 latent, and the VAE decoder's
# at a 16x16 latent (its last stages run at 128x128).
DEFAULT_SHAPES = ("2x2x1280", "4x4x1280", "8x8x640", "16x16x320", "16x16x512", "64x64x256", "128x128x128")


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        h, w, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--shape {text!r}: use HEIGHTxWIDTHxCHANNELS, e.g. 4x4x1280") from None
    return h, w, c


def median_seconds(fn, *args, repeats: int) -> float:
    """Median of `repeats` timed calls of fn(*args) after one untimed (compiling) call."""
    return statistics.median(time_calls(lambda: jax.block_until_ready(fn(*args)), repeats, warmup=1)[0])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", action="append", default=None, help="HxWxC (repeatable; default: SVD's shapes)")
    p.add_argument("--frames", type=int, default=14, help="images per call (the clip's frames)")
    p.add_argument("--kernel", default="3x3", help="3x3 (spatial) or 3x1x1 (temporal)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    kernel = tuple(int(k) for k in args.kernel.split("x"))
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; {args.frames} frames, kernel {args.kernel}, "
          f"median of {args.repeats} runs\n")
    print("| input | XLA conv as written s | GFLOP/s | im2col matmul s | GFLOP/s | Conv picks | Conv s | GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for text in args.shape or DEFAULT_SHAPES:
        h, w, c = parse_shape(text)
        layer = Conv(c, c, kernel, padding=tuple((k // 2, k // 2) for k in kernel), kernel_init=TORCH_DEFAULT_INIT,
                     rngs=nnx.Rngs(0))
        shape = (args.frames, h, w, c) if len(kernel) == 2 else (1, args.frames, h, w, c)
        x = jnp.asarray(rng.standard_normal(shape, np.float32))
        graphdef, state = nnx.split(layer)
        direct = jax.jit(lambda s, x: nnx.Conv.__call__(nnx.merge(graphdef, s), x))  # XLA's conv as written
        chosen = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))                     # what Conv picks
        matmul = jax.jit(lambda s, x: _im2col(nnx.merge(graphdef, s), x))
        flops = 2 * math.prod(shape[:-1]) * c * c * math.prod(kernel)
        t_direct = median_seconds(direct, state, x, repeats=args.repeats)
        t_matmul = median_seconds(matmul, state, x, repeats=args.repeats)
        t_chosen = median_seconds(chosen, state, x, repeats=args.repeats)
        picks = conv_method(shape[-len(kernel) - 1:-1], kernel, (1,) * len(kernel), layer.padding)
        print(f"| {'x'.join(map(str, shape))} | {t_direct:.4f} | {flops / t_direct / 1e9:.0f} | {t_matmul:.4f} | "
              f"{flops / t_matmul / 1e9:.0f} | {picks} | {t_chosen:.4f} | {flops / t_chosen / 1e9:.0f} |", flush=True)


def _im2col(layer: Conv, x: jax.Array) -> jax.Array:
    """The matmul path of Conv whatever the size (after the same folding of untouched axes)."""
    strides = (1,) * len(layer.kernel_size)
    return conv_channels_last(x, layer.kernel[...], strides, layer.padding, method="matmul") + layer.bias[...]


if __name__ == "__main__":
    main()
