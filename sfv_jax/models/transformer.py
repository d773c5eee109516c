"""The spatio-temporal transformer of SVD: a spatial block per frame, a temporal block per pixel."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sfv_jax.models.attention import Attention, FeedForward
from sfv_jax.models.layers import (AlphaBlender, GroupNorm, LayerNorm, TimestepEmbedding, linear, residual_add,
                                   timestep_embedding)
from sfv_jax.models.options import ModelOptions

LAYER_NORM_EPS = 1e-5


class BasicTransformerBlock(nnx.Module):
    """Pre-LN self-attention, cross-attention and GEGLU feed-forward, each with a residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int, options: ModelOptions,
                 rngs: nnx.Rngs):
        self.norm1 = LayerNorm(dim, LAYER_NORM_EPS, options)
        self.attn1 = Attention(dim, heads, dim_head, options, rngs)
        self.norm2 = LayerNorm(dim, LAYER_NORM_EPS, options)
        self.attn2 = Attention(dim, heads, dim_head, options, rngs, cross_attention_dim=cross_attention_dim)
        self.norm3 = LayerNorm(dim, LAYER_NORM_EPS, options)
        self.ff = FeedForward(dim, options, rngs)

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        """x: (N, L, dim), context: (N, S, cross_attention_dim) -> (N, L, dim)."""
        x = residual_add(x, self.attn1(self.norm1(x)))
        x = residual_add(x, self.attn2(self.norm2(x), context))
        return residual_add(x, self.ff(self.norm3(x)))


class TemporalBasicTransformerBlock(nnx.Module):
    """The same block applied along time: every pixel's T frames form one sequence.

    An extra feed-forward (ff_in) runs first; with dim == time_mix_inner_dim (always in SVD) the
    block is residual throughout.
    """

    def __init__(self, dim: int, time_mix_inner_dim: int, heads: int, dim_head: int, cross_attention_dim: int,
                 options: ModelOptions, rngs: nnx.Rngs):
        self.is_res = dim == time_mix_inner_dim
        self.norm_in = LayerNorm(dim, LAYER_NORM_EPS, options)
        self.ff_in = FeedForward(dim, options, rngs, dim_out=time_mix_inner_dim)
        self.norm1 = LayerNorm(time_mix_inner_dim, LAYER_NORM_EPS, options)
        self.attn1 = Attention(time_mix_inner_dim, heads, dim_head, options, rngs)
        self.norm2 = LayerNorm(time_mix_inner_dim, LAYER_NORM_EPS, options)
        self.attn2 = Attention(time_mix_inner_dim, heads, dim_head, options, rngs,
                               cross_attention_dim=cross_attention_dim)
        self.norm3 = LayerNorm(time_mix_inner_dim, LAYER_NORM_EPS, options)
        self.ff = FeedForward(time_mix_inner_dim, options, rngs)

    def __call__(self, x: jax.Array, num_frames: int, context: jax.Array) -> jax.Array:
        """x: (B*T, L, dim) frame-major, context: (B*L, S, D) -> (B*T, L, time_mix_inner_dim)."""
        batch_frames, length, channels = x.shape
        batch = batch_frames // num_frames
        x = x.reshape(batch, num_frames, length, channels).transpose(0, 2, 1, 3).reshape(batch * length, num_frames, channels)
        h = self.ff_in(self.norm_in(x))
        x = residual_add(x, h) if self.is_res else h
        x = residual_add(x, self.attn1(self.norm1(x)))
        x = residual_add(x, self.attn2(self.norm2(x), context))
        h = self.ff(self.norm3(x))
        x = residual_add(x, h) if self.is_res else h
        channels = x.shape[-1]
        return x.reshape(batch, length, num_frames, channels).transpose(0, 2, 1, 3).reshape(batch_frames, length, channels)


class TransformerSpatioTemporalModel(nnx.Module):
    """GroupNorm -> proj_in -> [spatial block, +frame position embedding, temporal block, blend]
    x num_layers -> proj_out, plus the input as residual (diffusers' TransformerSpatioTemporalModel).
    """

    def __init__(self, num_attention_heads: int, attention_head_dim: int, in_channels: int, num_layers: int,
                 cross_attention_dim: int, options: ModelOptions, rngs: nnx.Rngs):
        inner_dim = num_attention_heads * attention_head_dim
        self.in_channels = in_channels
        self.norm = GroupNorm(in_channels, num_groups=32, epsilon=1e-6, options=options)
        self.proj_in = linear(in_channels, inner_dim, options, rngs)
        self.transformer_blocks = nnx.List([
            BasicTransformerBlock(inner_dim, num_attention_heads, attention_head_dim, cross_attention_dim, options, rngs)
            for _ in range(num_layers)])
        self.temporal_transformer_blocks = nnx.List([
            TemporalBasicTransformerBlock(inner_dim, inner_dim, num_attention_heads, attention_head_dim,
                                          cross_attention_dim, options, rngs)
            for _ in range(num_layers)])
        self.time_pos_embed = TimestepEmbedding(in_channels, in_channels * 4, options, rngs, out_dim=in_channels)
        self.time_mixer = AlphaBlender(0.5, options)
        self.proj_out = linear(inner_dim, in_channels, options, rngs)

    def __call__(self, x: jax.Array, context: jax.Array, num_frames: int) -> jax.Array:
        """x: (B*T, H, W, C) frame-major, context: (B*T, S, D) -> (B*T, H, W, C)."""
        batch_frames, height, width, channels = x.shape
        batch = batch_frames // num_frames
        # The temporal blocks attend to the first frame's context of each video, for every pixel.
        first_frame_context = context.reshape(batch, num_frames, *context.shape[1:])[:, 0]
        time_context = jnp.repeat(first_frame_context, height * width, axis=0)

        residual = x
        h = self.proj_in(self.norm(x).reshape(batch_frames, height * width, channels))
        frame_ids = jnp.tile(jnp.arange(num_frames), batch)
        frame_emb = timestep_embedding(frame_ids, self.in_channels, dtype=h.dtype).astype(h.dtype)
        frame_emb = self.time_pos_embed(frame_emb)[:, None, :]
        for block, temporal_block in zip(self.transformer_blocks, self.temporal_transformer_blocks):
            h = block(h, context)
            h_temporal = temporal_block(h + frame_emb, num_frames, time_context)
            h = self.time_mixer(h, h_temporal)
        h = self.proj_out(h)
        return residual_add(residual, h.reshape(batch_frames, height, width, channels))
