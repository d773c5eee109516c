"""Blocks of AutoencoderKLTemporalDecoder: the SD image encoder and SVD's temporal decoder.

Attribute names follow diffusers' state-dict keys (down_blocks.0.resnets.1.conv1, mid_block.attentions.0.to_q,
...), so sfv_jax/convert/vae_rules.py stays short. Every activation is channels-last.
"""

from __future__ import annotations

import jax
from flax import nnx

from sfv_jax.models.attention import Attention
from sfv_jax.models.layers import Downsample2D, GroupNorm, Upsample2D, conv
from sfv_jax.models.options import ModelOptions, remat_call
from sfv_jax.models.resnet import ResnetBlock2D, SpatioTemporalResBlock

# diffusers hard-codes these for the VAE: every GroupNorm 1e-6, except the temporal half of the
# decoder's SpatioTemporalResBlocks (1e-5).
VAE_EPS = 1e-6
VAE_TEMPORAL_EPS = 1e-5


def _temporal_resblock(in_channels: int, out_channels: int, options: ModelOptions, rngs: nnx.Rngs):
    """The VAE flavour of SpatioTemporalResBlock: no time embedding, sigma(mix) weights the temporal branch."""
    return SpatioTemporalResBlock(in_channels, out_channels, None, VAE_EPS, options, rngs, temporal_eps=VAE_TEMPORAL_EPS,
                                  merge_factor=0.0, switch_spatial_to_temporal_mix=True)


class SpatialSelfAttention(Attention):
    """diffusers' Attention as the VAE mid blocks use it: one head over all pixels of an image.

    GroupNorm(32, eps 1e-6) on the input, q/k/v/out with bias, softmax in float32 (diffusers
    upcasts too), and the input added back.
    """

    def __init__(self, channels: int, options: ModelOptions, rngs: nnx.Rngs):
        super().__init__(channels, 1, channels, options, rngs, qkv_bias=True)
        self.group_norm = GroupNorm(channels, num_groups=32, epsilon=VAE_EPS, options=options)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (N, H, W, C) -> (N, H, W, C)."""
        n, height, width, channels = x.shape
        h = self.group_norm(x).reshape(n, height * width, channels)
        return x + super().__call__(h).reshape(x.shape)


class DownEncoderBlock2D(nnx.Module):
    """ResnetBlock2D x num_layers (no time embedding), then an optional (0, 1)-padded stride-2 conv."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, add_downsample: bool,
                 options: ModelOptions, rngs: nnx.Rngs):
        self.remat = options.remat
        self.resnets = nnx.List([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, VAE_EPS, options, rngs)
            for i in range(num_layers)])
        # diffusers pads right/bottom by one pixel then convolves without padding (Downsample2D padding=0).
        self.downsamplers = nnx.List([Downsample2D(out_channels, options, rngs, padding=((0, 1), (0, 1)))]) \
            if add_downsample else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (N, H, W, C_in) -> (N, H', W', C_out), H' = (H - 2) // 2 + 1 after a downsample."""
        for resnet in self.resnets:
            x = remat_call(self.remat, resnet, x, None)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UNetMidBlock2D(nnx.Module):
    """resnet -> [attention -> resnet] x num_layers at the encoder's lowest resolution."""

    def __init__(self, channels: int, options: ModelOptions, rngs: nnx.Rngs, num_layers: int = 1):
        self.remat = options.remat
        self.resnets = nnx.List([ResnetBlock2D(channels, channels, None, VAE_EPS, options, rngs)
                                 for _ in range(num_layers + 1)])
        self.attentions = nnx.List([SpatialSelfAttention(channels, options, rngs) for _ in range(num_layers)])

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (N, H, W, C) -> (N, H, W, C)."""
        x = remat_call(self.remat, self.resnets[0], x, None)
        for attention, resnet in zip(self.attentions, self.resnets[1:]):
            x = remat_call(self.remat, attention, x)
            x = remat_call(self.remat, resnet, x, None)
        return x


class Encoder(nnx.Module):
    """diffusers' vae.Encoder (double_z): image (N, H, W, C) -> moments (N, H/8, W/8, 2 * latent_channels)."""

    def __init__(self, in_channels: int, latent_channels: int, block_out_channels: tuple[int, ...],
                 layers_per_block: int, options: ModelOptions, rngs: nnx.Rngs):
        self.conv_in = conv(in_channels, block_out_channels[0], (3, 3), options, rngs)
        blocks, out_ch = [], block_out_channels[0]
        for i, channels in enumerate(block_out_channels):
            in_ch, out_ch = out_ch, channels
            blocks.append(DownEncoderBlock2D(in_ch, out_ch, layers_per_block,
                                             add_downsample=i < len(block_out_channels) - 1, options=options, rngs=rngs))
        self.down_blocks = nnx.List(blocks)
        self.mid_block = UNetMidBlock2D(block_out_channels[-1], options, rngs)
        self.conv_norm_out = GroupNorm(block_out_channels[-1], num_groups=32, epsilon=VAE_EPS, options=options)
        self.conv_out = conv(block_out_channels[-1], 2 * latent_channels, (3, 3), options, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class MidBlockTemporalDecoder(nnx.Module):
    """resnets[0] -> attention -> resnets[1] (diffusers zips resnets[1:] with its single attention).

    diffusers builds `num_layers` resnets but one attention and pairs them with zip, so with
    num_layers=1 the attention is never called and with num_layers>2 the extra resnets are not
    either; the parameters still exist and round-trip, and we run exactly what diffusers runs.
    """

    def __init__(self, channels: int, num_layers: int, options: ModelOptions, rngs: nnx.Rngs):
        self.remat = options.remat
        self.resnets = nnx.List([_temporal_resblock(channels, channels, options, rngs) for _ in range(num_layers)])
        self.attentions = nnx.List([SpatialSelfAttention(channels, options, rngs)])

    def __call__(self, x: jax.Array, num_frames: int) -> jax.Array:
        """x: (B*T, H, W, C) frame-major -> (B*T, H, W, C)."""
        x = remat_call(self.remat, self.resnets[0], x, None, num_frames=num_frames)
        for attention, resnet in zip(self.attentions, self.resnets[1:]):
            x = remat_call(self.remat, attention, x)
            x = remat_call(self.remat, resnet, x, None, num_frames=num_frames)
        return x


class UpBlockTemporalDecoder(nnx.Module):
    """SpatioTemporalResBlock x num_layers, then an optional nearest-2x upsample + conv."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, add_upsample: bool,
                 options: ModelOptions, rngs: nnx.Rngs):
        self.remat = options.remat
        self.resnets = nnx.List([_temporal_resblock(in_channels if i == 0 else out_channels, out_channels, options, rngs)
                                 for i in range(num_layers)])
        self.upsamplers = nnx.List([Upsample2D(out_channels, options, rngs)]) if add_upsample else None

    def __call__(self, x: jax.Array, num_frames: int) -> jax.Array:
        """x: (B*T, H, W, C_in) -> (B*T, 2H, 2W, C_out) (no upsample in the last block)."""
        for resnet in self.resnets:
            x = remat_call(self.remat, resnet, x, None, num_frames=num_frames)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class TemporalDecoder(nnx.Module):
    """SVD's decoder: latents (B*T, h, w, C_lat) of B clips of T frames -> frames (B*T, 8h, 8w, C_out).

    Temporal resblocks and the final Conv3d (kernel (3, 1, 1), zero-padded in time) mix the T
    frames of each clip and only those.
    """

    def __init__(self, latent_channels: int, out_channels: int, block_out_channels: tuple[int, ...],
                 layers_per_block: int, options: ModelOptions, rngs: nnx.Rngs):
        self.conv_in = conv(latent_channels, block_out_channels[-1], (3, 3), options, rngs)
        self.mid_block = MidBlockTemporalDecoder(block_out_channels[-1], layers_per_block, options, rngs)
        blocks, rev = [], block_out_channels[::-1]
        out_ch = rev[0]
        for i, channels in enumerate(rev):
            in_ch, out_ch = out_ch, channels
            blocks.append(UpBlockTemporalDecoder(in_ch, out_ch, layers_per_block + 1,
                                                 add_upsample=i < len(rev) - 1, options=options, rngs=rngs))
        self.up_blocks = nnx.List(blocks)
        self.conv_norm_out = GroupNorm(block_out_channels[0], num_groups=32, epsilon=VAE_EPS, options=options)
        self.conv_out = conv(block_out_channels[0], out_channels, (3, 3), options, rngs)
        self.time_conv_out = conv(out_channels, out_channels, (3, 1, 1), options, rngs)

    def __call__(self, z: jax.Array, num_frames: int) -> jax.Array:
        x = self.conv_in(z)
        x = self.mid_block(x, num_frames)
        for block in self.up_blocks:
            x = block(x, num_frames)
        x = self.conv_out(jax.nn.silu(self.conv_norm_out(x)))
        batch_frames, height, width, channels = x.shape
        video = x.reshape(batch_frames // num_frames, num_frames, height, width, channels)
        return self.time_conv_out(video).reshape(x.shape)
