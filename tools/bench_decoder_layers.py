"""The SVD VAE decoder layer by layer: PyTorch (as diffusers runs it, NCHW) vs sfv-jax, same shapes.

For each distinct convolution of TemporalDecoder (spatial 3x3, temporal (3, 1, 1), the doubling
upsample) and each GroupNorm + SiLU, prints the median seconds of one call in both frameworks, the
ratio, how many times the decoder runs that layer, and the count-weighted totals: the per-layer view
behind the vs-torch decode ratio in BENCHMARKS.md. Random weights and inputs, float32. Left out: the
1x1 shortcuts, the mid block's attention and time_conv_out (small); GroupNorms are timed per frame
(the temporal resblocks' pool over the clip: same work).

    python tools/bench_decoder_layers.py                          # SVD-XT's VAE, 16x16 latent, 14 frames
    python tools/bench_decoder_layers.py --latent 9x16 --frames 25
"""

from __future__ import annotations

import argparse
import collections
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from sfv_jax.bench.report import time_calls
from sfv_jax.models.layers import TORCH_DEFAULT_INIT, Conv, GroupNorm, Upsample2D, conv_method
from sfv_jax.models.options import ModelOptions
from sfv_jax.models.vae_blocks import VAE_EPS


def decoder_layers(block_out_channels, layers_per_block: int, latent_channels: int, height: int, width: int):
    """{(kind, height, width, c_in, c_out): count} of TemporalDecoder's convolutions and GroupNorms,
    in the order vae_blocks.TemporalDecoder builds them (kinds: conv3x3, temporal, upsample, norm)."""
    layers = collections.Counter()

    def resblock(h, w, c_in, c_out):  # SpatioTemporalResBlock: a 2D resnet, then a temporal one
        layers["norm", h, w, c_in, c_in] += 1
        layers["conv3x3", h, w, c_in, c_out] += 1
        for _ in range(3):
            layers["norm", h, w, c_out, c_out] += 1
        layers["conv3x3", h, w, c_out, c_out] += 1
        layers["temporal", h, w, c_out, c_out] += 2

    top = block_out_channels[-1]
    layers["conv3x3", height, width, latent_channels, top] += 1
    for _ in range(min(layers_per_block, 2)):  # the mid block runs resnets[0] and resnets[1] only
        resblock(height, width, top, top)
    channels = top
    for i, out_channels in enumerate(block_out_channels[::-1]):
        for j in range(layers_per_block + 1):
            resblock(height, width, channels if j == 0 else out_channels, out_channels)
        channels = out_channels
        if i < len(block_out_channels) - 1:
            layers["upsample", height, width, channels, channels] += 1
            height, width = 2 * height, 2 * width
    layers["norm", height, width, channels, channels] += 1
    layers["conv3x3", height, width, channels, 3] += 1
    return layers


def median_seconds(fn, repeats: int) -> float:
    """Median of `repeats` timed calls of fn after one untimed one (fn blocks until done)."""
    return statistics.median(time_calls(fn, repeats, warmup=1)[0])


def layer_pair(kind, c_in, c_out):
    """(sfv-jax module, torch callable on NCHW / NCDHW input) with the same random weights shape."""
    if kind == "norm":
        return GroupNorm(c_in, 32, VAE_EPS, ModelOptions()), torch.nn.Sequential(
            torch.nn.GroupNorm(32, c_in, VAE_EPS), torch.nn.SiLU())
    if kind == "upsample":
        conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1)
        return Upsample2D(c_in, ModelOptions(), nnx.Rngs(0)), lambda x: conv(
            torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
    kernel = (3, 3) if kind == "conv3x3" else (3, 1, 1)
    module = Conv(c_in, c_out, kernel, padding=tuple((k // 2, k // 2) for k in kernel), kernel_init=TORCH_DEFAULT_INIT,
                  rngs=nnx.Rngs(0))
    reference = torch.nn.Conv2d(c_in, c_out, 3, padding=1) if kind == "conv3x3" else torch.nn.Conv3d(
        c_in, c_out, kernel, padding=(1, 0, 0))
    return module, reference


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latent", default="16x16", help="latent HEIGHTxWIDTH (the frames are 8x larger)")
    p.add_argument("--frames", type=int, default=14)
    p.add_argument("--block-out-channels", default="128,256,512,512", help="the VAE's (SVD-XT's by default)")
    p.add_argument("--layers-per-block", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    try:
        height, width = (int(v) for v in args.latent.lower().split("x"))
        channels = tuple(int(c) for c in args.block_out_channels.split(","))
    except ValueError:
        raise SystemExit("--latent takes HEIGHTxWIDTH (e.g. 16x16), --block-out-channels comma-separated ints") from None
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} on "
          f"{torch.get_num_threads()} threads; {args.frames} frames, latent {height}x{width}, float32, "
          f"median of {args.repeats} calls\n")
    print("| layer | input (T, H, W, C) | count | torch s | sfv-jax s | sfv-jax / torch | sfv-jax path |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    totals = collections.defaultdict(lambda: [0.0, 0.0])
    for (kind, h, w, c_in, c_out), count in decoder_layers(channels, args.layers_per_block, 4, height, width).items():
        module, reference = layer_pair(kind, c_in, c_out)
        x = rng.standard_normal((args.frames, h, w, c_in), np.float32)
        if kind == "temporal":  # (B, T, H, W, C): one clip
            x_jax, x_torch = x[None], torch.from_numpy(np.ascontiguousarray(x.transpose(3, 0, 1, 2))[None])
        else:
            x_jax, x_torch = x, torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        graphdef, state = nnx.split(module)
        forward = jax.jit(lambda s, v: nnx.merge(graphdef, s)(v))
        x_jax = jnp.asarray(x_jax)
        with torch.no_grad():
            t_torch = median_seconds(lambda: reference(x_torch), args.repeats)
        t_jax = median_seconds(lambda: jax.block_until_ready(forward(state, x_jax)), args.repeats)
        if kind in ("conv3x3", "temporal"):
            window = module.kernel_size
            path = conv_method(x_jax.shape[-len(window) - 1:-1], window, (1,) * len(window), module.padding)
        else:
            path = {"upsample": "phases", "norm": "-"}[kind]
        group = "GroupNorm + SiLU" if kind == "norm" else "convolution"
        totals[group][0] += count * t_torch
        totals[group][1] += count * t_jax
        print(f"| {kind} {c_in}->{c_out} | {args.frames}x{h}x{w}x{c_in} | {count} | {t_torch:.4f} | {t_jax:.4f} | "
              f"{t_jax / t_torch:.2f} | {path} |", flush=True)
    for group, (t_torch, t_jax) in totals.items():
        print(f"| **{group}, count-weighted** | | | {t_torch:.2f} | {t_jax:.2f} | {t_jax / t_torch:.2f} | |")


if __name__ == "__main__":
    main()
