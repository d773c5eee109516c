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

# conv_method is re-exported: tests and tools ask layers which path a Conv takes.
from sfv_jax.models.conv_paths import (CHANNELS_LAST_DIMS, conv3x3_of_doubled, conv_channels_last,  # noqa: F401
                                       conv_method)
from sfv_jax.models.options import ModelOptions, at_least_float32


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


class Conv(nnx.Conv):
    """nnx.Conv (same parameters, same result) computed by conv_channels_last.

    Only explicit zero padding, unit dilation and one feature group take that path; any other
    setting keeps nnx.Conv's own computation.
    """

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """inputs: (*batch, *spatial, C_in) -> (*batch, *spatial', C_out)."""
        spatial = len(self.kernel_size)
        if (self.feature_group_count != 1 or self.mask is not None or isinstance(self.padding, str)
                or inputs.ndim < spatial + 2 or spatial not in CHANNELS_LAST_DIMS
                or any(d not in (None, 1) for d in (self.input_dilation, self.kernel_dilation))):
            return super().__call__(inputs)
        strides = (self.strides,) * spatial if isinstance(self.strides, int) else tuple(self.strides or (1,) * spatial)
        padding = tuple(tuple(p) for p in self.padding)
        dtype = self.dtype or inputs.dtype
        y = conv_channels_last(inputs.astype(dtype), self.kernel[...].astype(dtype), strides, padding, self.precision)
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


def residual_add(residual: jax.Array, update: jax.Array) -> jax.Array:
    """residual + update in float32.

    The residual stream stays float32 between blocks even when convolutions and matmuls
    compute in bf16: rounding it to bf16 at every block compounds through the ~100 residual
    additions of the UNet (2.4e-2 rel error vs 1e-2 on the tiny UNet with random weights).
    """
    dtype = at_least_float32(jnp.promote_types(residual.dtype, update.dtype))
    return residual.astype(dtype) + update.astype(dtype)


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
        """x: (N, *pooled, C) -> the same shape, in the compute dtype."""
        batch, channels = x.shape[0], x.shape[-1]
        per_group = channels // self.num_groups
        flat = x.astype(at_least_float32(x.dtype)).reshape(batch, -1, channels)  # (N, P, C): every pooled axis in one
        count = flat.shape[1] * per_group
        mean = flat.mean(axis=1).reshape(batch, self.num_groups, per_group).mean(axis=-1)  # (N, G)
        channel_mean = jnp.repeat(mean, per_group, axis=1)[:, None, :]  # (N, 1, C)
        centred = flat - channel_mean
        # The centred sum of squares as a contraction over positions: XLA:CPU fuses the centring into
        # it, where a reduce of jnp.square(centred) first writes x - mean out (one more pass over the
        # activation: the VAE decoder's GroupNorms took 2x torch's time). HIGHEST: a plain float32 sum
        # on accelerators that would otherwise round the operands of a dot to bf16.
        squares = jnp.einsum("npc,npc->nc", centred, centred, precision=jax.lax.Precision.HIGHEST)
        var = squares.reshape(batch, self.num_groups, per_group).sum(axis=-1) / count  # (N, G)
        # Normalise and apply the affine in one multiply-add per element: y = x * a + b per channel.
        a = jnp.repeat(jax.lax.rsqrt(var + self.epsilon), per_group, axis=1) * self.scale[...].astype(flat.dtype)
        b = self.bias[...].astype(flat.dtype) - channel_mean[:, 0] * a  # (N, C)
        out = flat * a[:, None, :] + b[:, None, :]
        return out.reshape(x.shape).astype(self.out_dtype)


class LayerNorm(nnx.Module):
    """torch.nn.LayerNorm over the last axis, statistics in float32."""

    def __init__(self, num_features: int, epsilon: float, options: ModelOptions):
        self.epsilon = epsilon
        self.out_dtype = options.compute_dtype
        self.scale = nnx.Param(jnp.ones((num_features,), options.params_dtype))
        self.bias = nnx.Param(jnp.zeros((num_features,), options.params_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(at_least_float32(x.dtype))
        mean = x32.mean(axis=-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(axis=-1, keepdims=True)
        out = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
        out = out * self.scale[...].astype(x32.dtype) + self.bias[...].astype(x32.dtype)
        return out.astype(self.out_dtype)


def timestep_embedding(timesteps: jax.Array, dim: int, flip_sin_to_cos: bool = True,
                       downscale_freq_shift: float = 0.0, max_period: float = 10000.0, dtype=None) -> jax.Array:
    """diffusers' get_timestep_embedding: (N,) -> (N, dim) sinusoids ([cos, sin] when flipped), in float32 or the
    wider of `dtype` and the input's (float64 models compute them in float64)."""
    half = dim // 2
    dtype = at_least_float32(jnp.promote_types(timesteps.dtype, dtype or jnp.float32))
    if dtype == jnp.float32:
        # Frequencies in float32 exactly as torch builds them, so the sinusoids of large ids
        # (motion_bucket_id=127) agree to the last bits.
        exponent = np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32)
        freqs = jnp.exp(jnp.asarray(exponent / np.float32(half - downscale_freq_shift)))
    else:  # float64 on the host: a compiled and an op-by-op program then see the same constants
        freqs = np.exp(-math.log(max_period) * np.arange(half) / (half - downscale_freq_shift))
    args = timesteps.astype(dtype)[:, None] * jnp.asarray(freqs, dtype)[None, :]
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
        if (out_h, out_w) == (2 * height, 2 * width) and self.conv.kernel_size == (3, 3) \
                and tuple(map(tuple, self.conv.padding)) == ((1, 1), (1, 1)):
            return self._conv_of_doubled(x)
        x = jnp.take(x, nearest_resize_indices(height, out_h), axis=-3)
        x = jnp.take(x, nearest_resize_indices(width, out_w), axis=-2)
        return self.conv(x)

    def _conv_of_doubled(self, x: jax.Array) -> jax.Array:
        """conv3x3(nearest_2x(x)) without building the 4x larger input (conv_paths.conv3x3_of_doubled)."""
        dtype = self.conv.dtype or x.dtype
        return conv3x3_of_doubled(x.astype(dtype), self.conv.kernel[...], self.conv.precision) \
            + self.conv.bias[...].astype(dtype)


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
        dtype = at_least_float32(jnp.promote_types(x_spatial.dtype, x_temporal.dtype))
        alpha = jax.nn.sigmoid(self.mix_factor[...].astype(dtype))
        if self.switch_spatial_to_temporal_mix:
            alpha = 1.0 - alpha
        # Blended in float32: both branches carry the residual stream (see residual_add).
        return alpha * x_spatial.astype(dtype) + (1.0 - alpha) * x_temporal.astype(dtype)
