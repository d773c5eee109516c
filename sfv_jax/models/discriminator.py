"""SF-V's discriminator: the frozen encoder half of the SVD UNet with 4 spatial and 4 temporal heads.

See docs/method.md section 3. The backbone is `UNetSpatioTemporalConditionModel` built with
`encoder_only=True` (conv_in, embeddings, down blocks: the same code and parameter names as the
generator, so it is initialised by copying the generator's matching parameters). Heads are the only
trained part:

  spatial head  (B*T, h, w, C):  conv3x3 -> GroupNorm -> LeakyReLU(0.2) -> conv -> phi (.., D_proj)
  temporal head (B*h*w, T, C):   conv k=3 along time -> GroupNorm -> LeakyReLU(0.2) -> conv -> phi

with projection conditioning (Miyato & Koyama): logit = w.phi + b + <phi, E(cond)>, where E embeds the
CLIP image embedding, c_noise(sigma') and the frame index. Logits are per position; the losses average
them (sfv_jax/train/losses.py).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from sfv_jax.models.layers import GroupNorm, conv, linear, timestep_embedding
from sfv_jax.models.options import ModelOptions, at_least_float32
from sfv_jax.models.unet import UNetSpatioTemporalConditionModel
from sfv_jax.models.unet_config import UNetConfig


HEAD_FAMILIES = ("spatial", "temporal")


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """Discriminator head hyper-parameters [ours: the paper shows the heads only in a figure].

    Attributes:
      hidden_channels: width of the first conv (0: the backbone feature width of that block).
      num_groups: GroupNorm groups (must divide the hidden width).
      proj_dim: D_proj, width of the per-position features phi and of the condition embedding.
      out_kernel: kernel size of the second conv (1: per-position linear map).
      leaky_slope: LeakyReLU negative slope.
      cond_embed_dim: width of the sinusoidal embeddings of c_noise(sigma') and of the frame index.
      norm_eps: GroupNorm epsilon.
      heads: which head families exist: "spatial,temporal" (SF-V), or one of them alone (the paper's ablation).
    """

    hidden_channels: int = 0
    num_groups: int = 32
    proj_dim: int = 256
    out_kernel: int = 1
    leaky_slope: float = 0.2
    cond_embed_dim: int = 256
    norm_eps: float = 1e-5
    heads: str = "spatial,temporal"

    @classmethod
    def from_dict(cls, config) -> "HeadConfig":
        return cls(**dict(config))

    @property
    def families(self) -> tuple[str, ...]:
        """The head families, from `heads`; ValueError naming the choices for anything else."""
        families = tuple(sorted({f.strip() for f in self.heads.split(",") if f.strip()}))
        if not families or not set(families) <= set(HEAD_FAMILIES):
            raise ValueError(f"disc.heads={self.heads!r}: use 'spatial,temporal' (SF-V), 'spatial' or 'temporal'")
        return families


class ConditionEmbedding(nnx.Module):
    """E(cond): CLIP embedding + c_noise + frame index -> (B, T, D_proj), a linear map of their concatenation."""

    def __init__(self, clip_dim: int, head: HeadConfig, options: ModelOptions, rngs: nnx.Rngs):
        self.cond_embed_dim = head.cond_embed_dim
        self.clip_proj = linear(clip_dim, head.proj_dim, options, rngs)
        self.noise_proj = linear(head.cond_embed_dim, head.proj_dim, options, rngs)
        self.frame_proj = linear(head.cond_embed_dim, head.proj_dim, options, rngs, use_bias=False)

    def __call__(self, clip: jax.Array, c_noise: jax.Array, num_frames: int) -> jax.Array:
        """clip (B, S, D) (mean over S tokens), c_noise (B,) -> (B, T, D_proj), float32 or wider.

        Row (b, t) embeds sample b's CLIP embedding and noise level and the frame index t.
        """
        dtype = at_least_float32(clip.dtype)
        clip_e = self.clip_proj(clip.astype(dtype).mean(axis=1))
        noise_e = self.noise_proj(timestep_embedding(c_noise, self.cond_embed_dim))
        frame_e = self.frame_proj(timestep_embedding(jnp.arange(num_frames), self.cond_embed_dim, dtype=dtype))
        return (clip_e + noise_e)[:, None, :].astype(dtype) + frame_e[None].astype(dtype)


class ProjectionHead(nnx.Module):
    """One head over (N, *positions, C) features; `ndim_positions` = 2 (spatial) or 1 (temporal)."""

    def __init__(self, in_channels: int, clip_dim: int, head: HeadConfig, ndim_positions: int,
                 options: ModelOptions, rngs: nnx.Rngs):
        hidden = head.hidden_channels or in_channels
        self.leaky_slope = head.leaky_slope
        self.conv1 = conv(in_channels, hidden, (3,) * ndim_positions, options, rngs)
        self.norm = GroupNorm(hidden, head.num_groups, head.norm_eps, options)
        self.conv2 = conv(hidden, head.proj_dim, (head.out_kernel,) * ndim_positions, options, rngs)
        self.out = linear(head.proj_dim, 1, options, rngs)  # w.phi + b
        self.embed = ConditionEmbedding(clip_dim, head, options, rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """phi: (N, *positions, C) -> (N, *positions, D_proj), float32 or wider."""
        h = jax.nn.leaky_relu(self.norm(self.conv1(x)), self.leaky_slope)
        out = self.conv2(h)
        return out.astype(at_least_float32(out.dtype))

    def logits(self, phi: jax.Array, cond: jax.Array) -> jax.Array:
        """phi and cond broadcastable (..., D_proj) -> per-position logits (...)."""
        return self.out(phi)[..., 0].astype(phi.dtype) + jnp.sum(phi * cond, axis=-1)


class SFVDiscriminator(nnx.Module):
    """Frozen UNet encoder (`backbone`) plus `spatial_heads` and `temporal_heads`, one of each per down block.

    With head.heads naming one family only (the paper's ablation), the other family's list is empty and its
    logits are an empty list; the spatial heads are built first, so a spatial-only discriminator's heads equal a
    full one's for the same rngs.
    """

    def __init__(self, unet_config: UNetConfig, head: HeadConfig, options: ModelOptions = ModelOptions(), *,
                 rngs: nnx.Rngs):
        self.backbone = UNetSpatioTemporalConditionModel(unet_config, options, rngs=rngs, encoder_only=True)
        clip_dim = unet_config.per_block("cross_attention_dim")[0]
        channels = unet_config.block_out_channels if "spatial" in head.families else ()
        self.spatial_heads = nnx.List([ProjectionHead(c, clip_dim, head, 2, options, rngs) for c in channels])
        channels = unet_config.block_out_channels if "temporal" in head.families else ()
        self.temporal_heads = nnx.List([ProjectionHead(c, clip_dim, head, 1, options, rngs) for c in channels])

    def backbone_features(self, noisy: jax.Array, sigma: jax.Array, image_latent: jax.Array, clip: jax.Array,
                          added_time_ids: jax.Array) -> list[jax.Array]:
        """The frozen encoder's 4 feature maps, each (B*T, h_i, w_i, C_i) (frame index fastest), for
        re-noised latents fed as the generator is fed: c_in(sigma') * noisy, c_noise(sigma'), the image latent
        repeated over frames on the channel axis. Arguments as for `__call__`."""
        sigma = sigma.astype(at_least_float32(sigma.dtype))
        c_in = (1.0 / jnp.sqrt(sigma ** 2 + 1.0))[:, None, None, None, None]
        cond_frames = jnp.broadcast_to(image_latent[:, None], noisy.shape[:-1] + image_latent.shape[-1:])
        sample = jnp.concatenate([(noisy * c_in).astype(image_latent.dtype), cond_frames], axis=-1)
        return self.backbone.down_features(sample, 0.25 * jnp.log(sigma), clip, added_time_ids)

    def head_logits(self, feats: list[jax.Array], c_noise: jax.Array, clip: jax.Array,
                    num_frames: int) -> dict[str, list[jax.Array]]:
        """The heads (8, or 4 of one family) on the backbone's feature maps (each (B*T, h_i, w_i, C_i));
        c_noise (B,), clip (B, 1, D).

        Returns {"spatial": [4 x (B, T, h_i, w_i)], "temporal": [4 x (B, T, h_i, w_i)]} per-position logits (an
        empty list for a family the discriminator does not have).
        """
        out = {"spatial": [], "temporal": []}
        for feat, s_head in zip(feats, self.spatial_heads):
            _, h, w, _ = feat.shape
            batch = feat.shape[0] // num_frames
            # Spatial: every frame is a sample; cond of (b, t) broadcast over its pixels.
            phi = s_head.features(feat).reshape(batch, num_frames, h, w, -1)
            cond = s_head.embed(clip, c_noise, num_frames)[:, :, None, None, :]
            out["spatial"].append(s_head.logits(phi, cond))
        for feat, t_head in zip(feats, self.temporal_heads):
            _, h, w, c = feat.shape
            batch = feat.shape[0] // num_frames
            # Temporal: every pixel's time series is a sample; cond of frame t at time position t.
            series = feat.reshape(batch, num_frames, h, w, c).transpose(0, 2, 3, 1, 4).reshape(-1, num_frames, c)
            phi = t_head.features(series).reshape(batch, h, w, num_frames, -1).transpose(0, 3, 1, 2, 4)
            cond = t_head.embed(clip, c_noise, num_frames)[:, :, None, None, :]
            out["temporal"].append(t_head.logits(phi, cond))
        return out

    def __call__(self, noisy: jax.Array, sigma: jax.Array, image_latent: jax.Array, clip: jax.Array,
                 added_time_ids: jax.Array) -> dict[str, list[jax.Array]]:
        """Per-head, per-position logits for re-noised latents.

        Args:
          noisy: (B, T, h, w, 4): x0 + sigma' * eps, NOT yet scaled by c_in (done here).
          sigma: (B,) sigma'.
          image_latent: (B, h, w, 4) the conditioning latent (repeated over frames and concatenated).
          clip: (B, 1, D) CLIP image embedding.
          added_time_ids: (B, 3).
        Returns:
          {"spatial": [4 x (B, T, h_i, w_i)], "temporal": [4 x (B, T, h_i, w_i)]} logits, float32 or wider.
        """
        feats = self.backbone_features(noisy, sigma, image_latent, clip, added_time_ids)
        c_noise = 0.25 * jnp.log(sigma.astype(at_least_float32(sigma.dtype)))
        return self.head_logits(feats, c_noise, clip, noisy.shape[1])


def backbone_params_from_unet(unet_params: dict, backbone_params: dict) -> dict:
    """The backbone's nested pure-dict params taken from a full UNet's (same names; mid/up/out dropped).

    Raises KeyError naming the first backbone key the UNet lacks.
    """
    def take(template, source, prefix):
        out = {}
        for key, value in template.items():
            if key not in source:
                raise KeyError(f"UNet params lack {prefix}{key} needed by the discriminator backbone")
            out[key] = take(value, source[key], f"{prefix}{key}.") if isinstance(value, dict) else source[key]
        return out
    return take(backbone_params, unet_params, "")
