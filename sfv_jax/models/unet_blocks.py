"""Down, mid and up blocks of UNetSpatioTemporalConditionModel (diffusers' unet_3d_blocks)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from sfv_jax.models.layers import Downsample2D, Upsample2D
from sfv_jax.models.options import ModelOptions, remat_call
from sfv_jax.models.resnet import SpatioTemporalResBlock
from sfv_jax.models.transformer import TransformerSpatioTemporalModel

# diffusers hard-codes these GroupNorm epsilons per block class; the constructor's resnet_eps is ignored.
CROSS_ATTN_BLOCK_EPS = 1e-6
PLAIN_DOWN_BLOCK_EPS = 1e-5
MID_BLOCK_EPS = 1e-5
UP_BLOCK_EPS = 1e-6


def _transformer(channels: int, heads: int, layers: int, cross_attention_dim: int, options, rngs):
    if channels % heads:
        raise ValueError(f"{channels} channels do not split into {heads} attention heads")
    return TransformerSpatioTemporalModel(heads, channels // heads, channels, num_layers=layers,
                                          cross_attention_dim=cross_attention_dim, options=options, rngs=rngs)


class DownBlockSpatioTemporal(nnx.Module):
    """Resnets (with transformers when `with_attention`), then an optional stride-2 downsample.

    Covers CrossAttnDownBlockSpatioTemporal (with_attention=True) and DownBlockSpatioTemporal.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, num_layers: int, add_downsample: bool,
                 options: ModelOptions, rngs: nnx.Rngs, with_attention: bool, transformer_layers: int = 1,
                 num_attention_heads: int = 1, cross_attention_dim: int = 1024):
        eps = CROSS_ATTN_BLOCK_EPS if with_attention else PLAIN_DOWN_BLOCK_EPS
        self.remat = options.remat
        self.resnets = nnx.List([
            SpatioTemporalResBlock(in_channels if i == 0 else out_channels, out_channels, temb_channels=temb_channels,
                                   eps=eps, options=options, rngs=rngs)
            for i in range(num_layers)])
        self.attentions = nnx.List([
            _transformer(out_channels, num_attention_heads, transformer_layers, cross_attention_dim, options, rngs)
            for _ in range(num_layers)]) if with_attention else None
        self.downsamplers = nnx.List([Downsample2D(out_channels, options, rngs)]) if add_downsample else None

    def __call__(self, x, temb, context, num_frames: int):
        """x: (B*T, H, W, C) -> (output, skips): every layer's output, then the downsampled one."""
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = remat_call(self.remat, resnet, x, temb, num_frames=num_frames)
            if self.attentions is not None:
                x = remat_call(self.remat, self.attentions[i], x, context, num_frames=num_frames)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UNetMidBlockSpatioTemporal(nnx.Module):
    """resnet -> [transformer -> resnet] x num_layers at the lowest resolution."""

    def __init__(self, channels: int, temb_channels: int, options: ModelOptions, rngs: nnx.Rngs,
                 transformer_layers: int = 1, num_attention_heads: int = 1, cross_attention_dim: int = 1024,
                 num_layers: int = 1):
        self.remat = options.remat
        self.resnets = nnx.List([
            SpatioTemporalResBlock(channels, channels, temb_channels=temb_channels, eps=MID_BLOCK_EPS, options=options,
                                   rngs=rngs)
            for _ in range(num_layers + 1)])
        self.attentions = nnx.List([
            _transformer(channels, num_attention_heads, transformer_layers, cross_attention_dim, options, rngs)
            for _ in range(num_layers)])

    def __call__(self, x, temb, context, num_frames: int):
        x = remat_call(self.remat, self.resnets[0], x, temb, num_frames=num_frames)
        for attention, resnet in zip(self.attentions, self.resnets[1:]):
            x = remat_call(self.remat, attention, x, context, num_frames=num_frames)
            x = remat_call(self.remat, resnet, x, temb, num_frames=num_frames)
        return x


class UpBlockSpatioTemporal(nnx.Module):
    """Resnets over [x, skip] concatenations (with transformers when `with_attention`), then an
    optional nearest-2x upsample. Covers CrossAttnUpBlockSpatioTemporal and UpBlockSpatioTemporal.
    """

    def __init__(self, in_channels: int, prev_output_channels: int, out_channels: int, temb_channels: int,
                 num_layers: int, add_upsample: bool, options: ModelOptions, rngs: nnx.Rngs, with_attention: bool,
                 transformer_layers: int = 1, num_attention_heads: int = 1, cross_attention_dim: int = 1024):
        self.remat = options.remat
        resnets = []
        for i in range(num_layers):
            skip_channels = in_channels if i == num_layers - 1 else out_channels
            resnet_in = prev_output_channels if i == 0 else out_channels
            resnets.append(SpatioTemporalResBlock(resnet_in + skip_channels, out_channels, temb_channels=temb_channels,
                                                  eps=UP_BLOCK_EPS, options=options, rngs=rngs))
        self.resnets = nnx.List(resnets)
        self.attentions = nnx.List([
            _transformer(out_channels, num_attention_heads, transformer_layers, cross_attention_dim, options, rngs)
            for _ in range(num_layers)]) if with_attention else None
        self.upsamplers = nnx.List([Upsample2D(out_channels, options, rngs)]) if add_upsample else None

    def __call__(self, x, skips: list, temb, context, num_frames: int, upsample_size=None):
        """Consumes `skips` from the end (the last skip first); the current activation comes first
        in each channel concatenation, as in diffusers."""
        for i, resnet in enumerate(self.resnets):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = remat_call(self.remat, resnet, x, temb, num_frames=num_frames)
            if self.attentions is not None:
                x = remat_call(self.remat, self.attentions[i], x, context, num_frames=num_frames)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x
