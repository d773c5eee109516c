"""The tiny diffusers UNet the UNet tests compare against."""

from __future__ import annotations

import os

import torch
from diffusers import UNetSpatioTemporalConditionModel as TorchUNet

from tests.reference import randomize_

# configs/tiny.py's architecture: every block type of SVD at widths a CPU runs in a second.
TINY_UNET = dict(
    block_out_channels=(32, 64, 64, 64), num_attention_heads=(2, 4, 4, 4), cross_attention_dim=32,
    addition_time_embed_dim=8, projection_class_embeddings_input_dim=24, num_frames=4, layers_per_block=2,
    sample_size=8)


def tiny_torch_unet(seed: int = 0, **overrides) -> TorchUNet:
    torch.manual_seed(seed)
    unet = TorchUNet(**{**TINY_UNET, **overrides}).eval()
    randomize_(unet, seed)
    return unet


def save_unet(unet: TorchUNet, folder: str, **kwargs) -> str:
    unet.save_pretrained(folder, **kwargs)
    return folder


def unet_inputs(batch: int, frames: int, height: int, width: int, cross_dim: int = 32, seed: int = 0):
    """Random torch inputs (channels-first, as diffusers takes them)."""
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, frames, 8, height, width, generator=gen)
    timestep = torch.randn(batch, generator=gen)
    context = torch.randn(batch, 1, cross_dim, generator=gen)
    time_ids = torch.stack([torch.tensor([6.0, 127.0, 0.02]) + torch.rand(3, generator=gen) * torch.tensor(
        [3.0, 60.0, 0.1]) for _ in range(batch)])
    return sample, timestep, context, time_ids
