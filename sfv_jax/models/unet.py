"""Flax NNX port of diffusers' UNetSpatioTemporalConditionModel (the SVD / SVD-XT denoiser)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from sfv_jax.models.layers import GroupNorm, TimestepEmbedding, conv, timestep_embedding
from sfv_jax.models.options import ModelOptions, at_least_float32
from sfv_jax.models.unet_blocks import DownBlockSpatioTemporal, UNetMidBlockSpatioTemporal, UpBlockSpatioTemporal
from sfv_jax.models.unet_config import UNetConfig


class UNetSpatioTemporalConditionModel(nnx.Module):
    """The SVD UNet, channels-last.

    Attribute names follow diffusers' state-dict keys (down_blocks.0.resnets.1...), so each
    parameter converts by a short rule (sfv_jax/convert/unet_rules.py).
    """

    def __init__(self, config: UNetConfig, options: ModelOptions = ModelOptions(), *, rngs: nnx.Rngs,
                 encoder_only: bool = False):
        """`encoder_only` builds conv_in, the embeddings and the down blocks only (SF-V's discriminator
        backbone): no mid/up/out parameters; only `down_features` can be called then."""
        self.config = config
        self.options = options
        self.encoder_only = encoder_only
        channels = config.block_out_channels
        time_embed_dim = channels[0] * 4
        # One spec per resolution level, from the finest (level 0) down: the down path reads them in order,
        # the up path in reverse, as the architecture diagram does.
        levels = list(zip(channels, *(config.per_block(field) for field in (
            "layers_per_block", "transformer_layers_per_block", "num_attention_heads", "cross_attention_dim"))))
        last = len(levels) - 1

        self.conv_in = conv(config.in_channels, channels[0], (3, 3), options, rngs)
        # The conditioning embeddings run in float32 whatever the compute dtype: they are a few rows
        # of matmul, and every resnet of the network adds them.
        embed_options = dataclasses.replace(options, dtype=str(at_least_float32(options.compute_dtype)))
        self.time_embedding = TimestepEmbedding(channels[0], time_embed_dim, embed_options, rngs)
        self.add_embedding = TimestepEmbedding(config.projection_class_embeddings_input_dim, time_embed_dim,
                                               embed_options, rngs)

        down_blocks, in_ch = [], channels[0]
        for level, (block_type, (out_ch, num_layers, t_layers, heads, cross_dim)) in enumerate(
                zip(config.down_block_types, levels)):
            down_blocks.append(DownBlockSpatioTemporal(
                in_ch, out_ch, temb_channels=time_embed_dim, num_layers=num_layers, add_downsample=level < last,
                options=options, rngs=rngs, with_attention=block_type.startswith("CrossAttn"),
                transformer_layers=t_layers, num_attention_heads=heads, cross_attention_dim=cross_dim))
            in_ch = out_ch
        self.down_blocks = nnx.List(down_blocks)
        if encoder_only:
            return

        _, _, t_layers, heads, cross_dim = levels[-1]
        self.mid_block = UNetMidBlockSpatioTemporal(
            channels[-1], temb_channels=time_embed_dim, options=options, rngs=rngs, transformer_layers=t_layers,
            num_attention_heads=heads, cross_attention_dim=cross_dim)

        up_blocks, prev_ch = [], channels[-1]
        for i, (block_type, (out_ch, num_layers, t_layers, heads, cross_dim)) in enumerate(
                zip(config.up_block_types, reversed(levels))):
            level = last - i
            # The block's last resnet meets the first skip of its level: the down block's input, as wide as the
            # finer level (conv_in's output at level 0).
            skip_ch = channels[max(level - 1, 0)]
            up_blocks.append(UpBlockSpatioTemporal(
                skip_ch, prev_ch, out_ch, temb_channels=time_embed_dim, num_layers=num_layers + 1,
                add_upsample=level > 0, options=options, rngs=rngs, with_attention=block_type.startswith("CrossAttn"),
                transformer_layers=t_layers, num_attention_heads=heads, cross_attention_dim=cross_dim))
            prev_ch = out_ch
        self.up_blocks = nnx.List(up_blocks)

        self.conv_norm_out = GroupNorm(channels[0], num_groups=32, epsilon=1e-5, options=options)
        self.conv_out = conv(channels[0], config.out_channels, (3, 3), options, rngs)

    def _embed(self, sample, timestep, encoder_hidden_states, added_time_ids):
        """conv_in output (B*T, h, w, C0), the per-frame embedding and context, shared by both entry points."""
        batch, num_frames, height, width, _ = sample.shape
        dtype = self.options.compute_dtype
        timestep = jnp.asarray(timestep)
        timestep = jnp.broadcast_to(timestep.astype(at_least_float32(timestep.dtype)).reshape(-1), (batch,))
        emb = self.time_embedding(timestep_embedding(timestep, self.config.block_out_channels[0]))
        time_ids = timestep_embedding(added_time_ids.reshape(-1), self.config.addition_time_embed_dim)
        emb = emb + self.add_embedding(time_ids.reshape(batch, -1))

        # Frames become batch entries, frame index fastest, as diffusers' flatten(0, 1).
        x = sample.astype(dtype).reshape(batch * num_frames, height, width, -1)
        emb = jnp.repeat(emb, num_frames, axis=0)
        context = jnp.repeat(encoder_hidden_states.astype(dtype), num_frames, axis=0)
        return self.options.constrain_activation(self.conv_in(x)), emb, context

    def down_features(self, sample: jax.Array, timestep: jax.Array, encoder_hidden_states: jax.Array,
                      added_time_ids: jax.Array) -> list[jax.Array]:
        """The output of each down block (after its downsampler, if any), for SF-V's discriminator.

        Arguments as for `__call__`. Returns one (B*T, h_i, w_i, C_i) array per down block, frame index
        fastest along the first axis.
        """
        num_frames = sample.shape[1]
        x, emb, context = self._embed(sample, timestep, encoder_hidden_states, added_time_ids)
        features = []
        for block in self.down_blocks:
            x, _ = block(x, emb, context, num_frames)
            x = self.options.constrain_activation(x)
            features.append(x)
        return features

    def __call__(self, sample: jax.Array, timestep: jax.Array, encoder_hidden_states: jax.Array,
                 added_time_ids: jax.Array) -> jax.Array:
        """Predicts the denoiser output F for every frame.

        Args:
          sample: (B, T, h, w, in_channels): the c_in-scaled noisy latent, then the image latent.
          timestep: (B,) or scalar: c_noise = 0.25 * ln(sigma).
          encoder_hidden_states: (B, S, cross_attention_dim): the CLIP image embedding (S = 1 in SVD).
          added_time_ids: (B, 3): [fps - 1, motion_bucket_id, noise_aug_strength].
        Returns:
          (B, T, h, w, out_channels) in the compute dtype.
        """
        if self.encoder_only:
            raise ValueError("this UNet was built with encoder_only=True; call down_features instead")
        batch, num_frames, height, width, _ = sample.shape
        x, emb, context = self._embed(sample, timestep, encoder_hidden_states, added_time_ids)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, emb, context, num_frames)
            x = self.options.constrain_activation(x)
            skips.extend(block_skips)
        x = self.options.constrain_activation(self.mid_block(x, emb, context, num_frames))
        for block in self.up_blocks:
            block_skips = skips[-len(block.resnets):]
            del skips[-len(block.resnets):]
            # Upsample to the size of the skip it meets next, so any latent size works (diffusers'
            # forward_upsample_size); for sizes divisible by 2**num_upsamplers this is exactly 2x.
            upsample_size = skips[-1].shape[1:3] if skips and block.upsamplers is not None else None
            x = self.options.constrain_activation(block(x, block_skips, emb, context, num_frames, upsample_size))
        x = self.conv_out(jax.nn.silu(self.conv_norm_out(x)))
        return x.reshape(batch, num_frames, height, width, -1)
