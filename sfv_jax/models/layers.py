"""Small layers shared by the SVD UNet and VAE, channels-last, named as diffusers names them.

Parameter names follow diffusers' state dict (kernel/scale are Flax's names for weight) so the
converter rules stay short.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sfv_jax.models.options import ModelOptions


# torch's default init for Linear and Conv weights: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
# Uniform draws are also the cheapest to compile when a model is initialised op by op.
TORCH_DEFAULT_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def linear(in_features: int, out_features: int, options: ModelOptions, rngs: nnx.Rngs, use_bias: bool = True) -> nnx.Linear:
    return nnx.Linear(in_features, out_features, use_bias=use_bias, dtype=options.compute_dtype,
                      param_dtype=options.params_dtype, kernel_init=TORCH_DEFAULT_INIT, rngs=rngs)


def conv(in_features: int, out_features: int, kernel_size: tuple[int, ...], options: ModelOptions, rngs: nnx.Rngs,
         strides: int | tuple[int, ...] = 1, padding=None) -> "Conv":
    """A torch-style convolution: zero padding of k//2 per side unless `padding` is given."""
    if padding is None:
        padding = tuple((k // 2, k // 2) for k in kernel_size)
    return Conv(in_features, out_features, kernel_size, strides=strides, padding=padding,
                dtype=options.compute_dtype, param_dtype=options.params_dtype, kernel_init=TORCH_DEFAULT_INIT,
                rngs=rngs)


# Output positions per image (product of the output's spatial sizes) up to which a convolution runs
# as one matmul over its gathered windows. XLA:CPU's direct convolution collapses on tiny images: a
# 3x3 conv on a 14x2x2x1280 input (SVD's bottleneck at a 16x16 latent) ran at 1 GFLOP/s, 1.6 s per
# call, and a 4x4 one at ~50 GFLOP/s, against ~90-170 GFLOP/s for the same work as one matmul
# (tools/bench_conv.py). From 8x8 on the direct convolution is as fast or faster and needs no
# k-fold copy of its input, so larger images keep it.
MATMUL_CONV_MAX_POSITIONS = 32


class Conv(nnx.Conv):
    """nnx.Conv (same parameters, same result) that picks how the convolution is computed.

    Pointwise (1x1) kernels and convolutions with few output positions are computed as a single
    matmul of the zero-padded, strided windows ("im2col") with the flattened kernel; everything
    else goes to XLA's convolution. Only explicit zero padding, unit dilation and one feature
    group take the matmul path; any other setting keeps nnx.Conv's own computation.
    """

    def _window_positions(self, inputs: jax.Array) -> tuple[int, ...] | None:
        """Output spatial shape when the matmul path applies, else None."""
        spatial = len(self.kernel_size)
        if (self.feature_group_count != 1 or self.mask is not None or isinstance(self.padding, str)
                or inputs.ndim < spatial + 2 or any(d not in (None, 1) for d in (self.input_dilation, self.kernel_dilation))):
            return None
        strides = (self.strides,) * spatial if isinstance(self.strides, int) else tuple(self.strides or (1,) * spatial)
        padding = tuple(tuple(p) for p in self.padding)
        sizes = inputs.shape[-spatial - 1:-1]
        out = tuple((n + lo + hi - k) // s + 1 for n, (lo, hi), k, s in zip(sizes, padding, self.kernel_size, strides))
        pointwise = all(k == 1 for k in self.kernel_size) and all(p == (0, 0) for p in padding)
        if min(out) < 1 or not (pointwise or math.prod(out) <= MATMUL_CONV_MAX_POSITIONS):
            return None
        return out

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """inputs: (*batch, *spatial, C_in) -> (*batch, *spatial', C_out)."""
        out_sizes = self._window_positions(inputs)
        if out_sizes is None:
            return super().__call__(inputs)
        spatial = len(self.kernel_size)
        strides = (self.strides,) * spatial if isinstance(self.strides, int) else tuple(self.strides or (1,) * spatial)
        dtype = self.dtype or inputs.dtype
        x = inputs.astype(dtype)
        x = jnp.pad(x, ((0, 0),) * (x.ndim - spatial - 1) + tuple(tuple(p) for p in self.padding) + ((0, 0),))
        windows = []
        for offset in np.ndindex(*self.kernel_size):
            start = [0] * (x.ndim - spatial - 1) + list(offset) + [0]
            limit = (list(x.shape[:-spatial - 1]) + [o + s * (n - 1) + 1 for o, s, n in zip(offset, strides, out_sizes)]
                     + [x.shape[-1]])
            step = [1] * (x.ndim - spatial - 1) + list(strides) + [1]
            windows.append(jax.lax.slice(x, start, limit, step))
        # Window-major, then input channel: the row order of kernel.reshape(prod(k) * C_in, C_out).
        patches = windows[0] if len(windows) == 1 else jnp.concatenate(windows, axis=-1)
        kernel = self.kernel[...].astype(dtype).reshape(-1, self.out_features)
        y = jnp.einsum("...c,co->...o", patches, kernel, precision=self.precision)
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


def residual_add(residual: jax.Array, update: jax.Array) -> jax.Array:
    """residual + update in float32.

    The residual stream stays float32 between blocks even when convolutions and matmuls
    compute in bf16: rounding it to bf16 at every block compounds through the ~100 residual
    additions of the UNet (2.4e-2 rel error vs 1e-2 on the tiny UNet with random weights).
    """
    return residual.astype(jnp.float32) + update.astype(jnp.float32)


class GroupNorm(nnx.Module):
    """torch.nn.GroupNorm on channels-last input, statistics in float32.

    Groups are contiguous channel blocks (as in torch). Statistics pool over every axis except
    the first (the sample) and the channels, so a (N, H, W, C) input normalises per image and a
    (B, T, H, W, C) input pools over frames and pixels, as diffusers' temporal resblocks do.
    """

    def __init__(self, num_channels: int, num_groups: int, epsilon: float, options: ModelOptions):
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels do not split into {num_groups} groups")
        self.num_groups = num_groups
        self.epsilon = epsilon
        self.out_dtype = options.compute_dtype
        self.scale = nnx.Param(jnp.ones((num_channels,), options.params_dtype))
        self.bias = nnx.Param(jnp.zeros((num_channels,), options.params_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        grouped = x.astype(jnp.float32).reshape(*x.shape[:-1], self.num_groups, channels // self.num_groups)
        axes = tuple(range(1, grouped.ndim - 2)) + (grouped.ndim - 1,)
        mean = grouped.mean(axis=axes, keepdims=True)
        var = jnp.square(grouped - mean).mean(axis=axes, keepdims=True)
        normed = ((grouped - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        out = normed * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return out.astype(self.out_dtype)


class LayerNorm(nnx.Module):
    """torch.nn.LayerNorm over the last axis, statistics in float32."""

    def __init__(self, num_features: int, epsilon: float, options: ModelOptions):
        self.epsilon = epsilon
        self.out_dtype = options.compute_dtype
        self.scale = nnx.Param(jnp.ones((num_features,), options.params_dtype))
        self.bias = nnx.Param(jnp.zeros((num_features,), options.params_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(axis=-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(axis=-1, keepdims=True)
        out = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
        out = out * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return out.astype(self.out_dtype)


def timestep_embedding(timesteps: jax.Array, dim: int, flip_sin_to_cos: bool = True,
                       downscale_freq_shift: float = 0.0, max_period: float = 10000.0) -> jax.Array:
    """diffusers' get_timestep_embedding: (N,) -> (N, dim) float32 sinusoids ([cos, sin] when flipped)."""
    half = dim // 2
    # Frequencies in float32 exactly as torch builds them, so the sinusoids of large ids
    # (motion_bucket_id=127) agree to the last bits.
    exponent = np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32)
    freqs = jnp.exp(jnp.asarray(exponent / np.float32(half - downscale_freq_shift)))
    args = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nnx.Module):
    """Linear -> SiLU -> Linear, diffusers' TimestepEmbedding (linear_1, linear_2)."""

    def __init__(self, in_channels: int, time_embed_dim: int, options: ModelOptions, rngs: nnx.Rngs,
                 out_dim: int | None = None):
        self.linear_1 = linear(in_channels, time_embed_dim, options, rngs)
        self.linear_2 = linear(time_embed_dim, out_dim or time_embed_dim, options, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_2(jax.nn.silu(self.linear_1(x)))


class Downsample2D(nnx.Module):
    """Conv3x3 with stride 2. SVD's UNet pads (1, 1) on both sides; its VAE encoder pads (0, 1)."""

    def __init__(self, channels: int, options: ModelOptions, rngs: nnx.Rngs, padding=((1, 1), (1, 1))):
        self.conv = conv(channels, channels, (3, 3), options, rngs, strides=2, padding=padding)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


def nearest_resize_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output pixel of torch's F.interpolate(mode="nearest").

    torch computes floor(out_index * (in/out)) in float32; an exact 2x is a plain repeat.
    """
    if out_size == 2 * in_size:
        return np.arange(out_size) // 2
    scale = np.float32(in_size) / np.float32(out_size)
    idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, in_size - 1)


class Upsample2D(nnx.Module):
    """Nearest-neighbour upsampling to `output_size` (default 2x), then Conv3x3."""

    def __init__(self, channels: int, options: ModelOptions, rngs: nnx.Rngs):
        self.conv = conv(channels, channels, (3, 3), options, rngs)

    def __call__(self, x: jax.Array, output_size: tuple[int, int] | None = None) -> jax.Array:
        """x: (N, H, W, C) -> (N, H', W', C) with (H', W') = output_size or (2H, 2W)."""
        height, width = x.shape[-3:-1]
        out_h, out_w = output_size or (2 * height, 2 * width)
        if (out_h, out_w) == (2 * height, 2 * width):
            x = jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)
        else:
            x = jnp.take(x, nearest_resize_indices(height, out_h), axis=-3)
            x = jnp.take(x, nearest_resize_indices(width, out_w), axis=-2)
        return self.conv(x)


class AlphaBlender(nnx.Module):
    """Learned blend of a spatial and a temporal branch: diffusers' AlphaBlender.

    The UNet uses merge_strategy "learned_with_images" with an all-zero image_only_indicator, so
    alpha = sigmoid(mix_factor) weights the spatial branch; the temporal VAE decoder switches
    the roles (`switch_spatial_to_temporal_mix`), so there alpha weights the temporal branch.
    """

    def __init__(self, alpha: float, options: ModelOptions, switch_spatial_to_temporal_mix: bool = False):
        self.switch_spatial_to_temporal_mix = switch_spatial_to_temporal_mix
        # init_value lets random_init (which fills abstract models on the host) restore it.
        self.mix_factor = nnx.Param(jnp.full((1,), alpha, options.params_dtype), init_value=alpha)

    def __call__(self, x_spatial: jax.Array, x_temporal: jax.Array) -> jax.Array:
        alpha = jax.nn.sigmoid(self.mix_factor[...].astype(jnp.float32))
        if self.switch_spatial_to_temporal_mix:
            alpha = 1.0 - alpha
        # Blended in float32: both branches carry the residual stream (see residual_add).
        return alpha * x_spatial.astype(jnp.float32) + (1.0 - alpha) * x_temporal.astype(jnp.float32)
