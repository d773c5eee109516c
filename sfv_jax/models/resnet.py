"""Residual blocks of SVD: the 2D resnet, its temporal twin, and their learned blend."""

from __future__ import annotations

import jax
from flax import nnx

from sfv_jax.models.layers import AlphaBlender, GroupNorm, conv, linear, residual_add
from sfv_jax.models.options import ModelOptions


class ResnetBlock2D(nnx.Module):
    """GN -> SiLU -> Conv3x3 (+ time embedding) -> GN -> SiLU -> Conv3x3, plus a shortcut.

    diffusers' ResnetBlock2D with its SVD settings: 32 groups, output_scale_factor 1, a 1x1
    conv_shortcut when the channel count changes, no time embedding when temb_channels is None.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, eps: float,
                 options: ModelOptions, rngs: nnx.Rngs):
        self.norm1 = GroupNorm(in_channels, num_groups=32, epsilon=eps, options=options)
        self.conv1 = conv(in_channels, out_channels, (3, 3), options, rngs)
        self.time_emb_proj = linear(temb_channels, out_channels, options, rngs) if temb_channels else None
        self.norm2 = GroupNorm(out_channels, num_groups=32, epsilon=eps, options=options)
        self.conv2 = conv(out_channels, out_channels, (3, 3), options, rngs)
        self.conv_shortcut = conv(in_channels, out_channels, (1, 1), options, rngs) if in_channels != out_channels else None

    def __call__(self, x: jax.Array, temb: jax.Array | None) -> jax.Array:
        """x: (N, H, W, C_in), temb: (N, E) or None -> (N, H, W, C_out)."""
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(jax.nn.silu(temb))[:, None, None, :]
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return residual_add(shortcut, h)


class TemporalResnetBlock(nnx.Module):
    """The temporal twin of ResnetBlock2D: Conv3d with kernel (3, 1, 1) zero-padded in time.

    Its GroupNorms see (B, T, H, W, C), so their statistics pool over frames and pixels.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, eps: float,
                 options: ModelOptions, rngs: nnx.Rngs):
        kernel = (3, 1, 1)
        self.norm1 = GroupNorm(in_channels, num_groups=32, epsilon=eps, options=options)
        self.conv1 = conv(in_channels, out_channels, kernel, options, rngs)
        self.time_emb_proj = linear(temb_channels, out_channels, options, rngs) if temb_channels else None
        self.norm2 = GroupNorm(out_channels, num_groups=32, epsilon=eps, options=options)
        self.conv2 = conv(out_channels, out_channels, kernel, options, rngs)
        self.conv_shortcut = conv(in_channels, out_channels, (1, 1, 1), options, rngs) if in_channels != out_channels else None

    def __call__(self, x: jax.Array, temb: jax.Array | None) -> jax.Array:
        """x: (B, T, H, W, C_in), temb: (B, T, E) or None -> (B, T, H, W, C_out)."""
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(jax.nn.silu(temb))[:, :, None, None, :]
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return residual_add(shortcut, h)


class SpatioTemporalResBlock(nnx.Module):
    """A 2D resnet per frame, a temporal resnet across frames, blended by a learned factor.

    UNet flavour (defaults): alpha = sigmoid(mix_factor) weights the spatial output, both
    resnets share `eps`. VAE-decoder flavour: temb_channels=None, temporal_eps=1e-5,
    merge_factor=0.0, switch_spatial_to_temporal_mix=True.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, eps: float,
                 options: ModelOptions, rngs: nnx.Rngs, temporal_eps: float | None = None,
                 merge_factor: float = 0.5, switch_spatial_to_temporal_mix: bool = False):
        self.spatial_res_block = ResnetBlock2D(in_channels, out_channels, temb_channels, eps, options, rngs)
        self.temporal_res_block = TemporalResnetBlock(
            out_channels, out_channels, temb_channels, eps if temporal_eps is None else temporal_eps, options, rngs)
        self.time_mixer = AlphaBlender(merge_factor, options, switch_spatial_to_temporal_mix)

    def __call__(self, x: jax.Array, temb: jax.Array | None, num_frames: int) -> jax.Array:
        """x: (B*T, H, W, C_in) frame-major, temb: (B*T, E) or None -> (B*T, H, W, C_out)."""
        spatial = self.spatial_res_block(x, temb)
        batch_frames, height, width, channels = spatial.shape
        video = spatial.reshape(batch_frames // num_frames, num_frames, height, width, channels)
        if temb is not None:
            temb = temb.reshape(batch_frames // num_frames, num_frames, -1)
        temporal = self.temporal_res_block(video, temb)
        return self.time_mixer(video, temporal).reshape(spatial.shape)
