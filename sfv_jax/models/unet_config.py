"""The architecture of UNetSpatioTemporalConditionModel, read from and written to diffusers' config.json."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from sfv_jax.models.diffusers_config import dataclass_from_diffusers, dataclass_to_diffusers

DIFFUSERS_CLASS_NAME = "UNetSpatioTemporalConditionModel"
DOWN_BLOCK_TYPES = ("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal")
UP_BLOCK_TYPES = ("CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal")


def _per_block(value, n: int, name: str) -> tuple:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(value)
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries but there are {n} down blocks")
    return value


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Fields and defaults of diffusers' UNetSpatioTemporalConditionModel.__init__ (SVD-XT values)."""

    sample_size: int | None = None
    in_channels: int = 8
    out_channels: int = 4
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",)
    up_block_types: tuple[str, ...] = ("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    addition_time_embed_dim: int = 256
    projection_class_embeddings_input_dim: int = 768
    layers_per_block: int | tuple[int, ...] = 2
    cross_attention_dim: int | tuple[int, ...] = 1024
    transformer_layers_per_block: int | tuple[int, ...] = 1
    num_attention_heads: int | tuple[int, ...] = (5, 10, 20, 20)
    num_frames: int = 25

    def __post_init__(self):
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(f"down_block_types, up_block_types and block_out_channels must have the same length, "
                             f"got {len(self.down_block_types)}, {len(self.up_block_types)} and {n}")
        for kind, allowed in ((self.down_block_types, DOWN_BLOCK_TYPES), (self.up_block_types, UP_BLOCK_TYPES)):
            for block_type in kind:
                if block_type not in allowed:
                    raise ValueError(f"unknown block type {block_type!r}; SVD uses {allowed}")
        for name in ("layers_per_block", "cross_attention_dim", "transformer_layers_per_block", "num_attention_heads"):
            _per_block(getattr(self, name), n, name)
        if self.projection_class_embeddings_input_dim != 3 * self.addition_time_embed_dim:
            raise ValueError("projection_class_embeddings_input_dim must be 3 * addition_time_embed_dim "
                             "(fps, motion bucket and noise augmentation are each embedded)")

    def per_block(self, name: str) -> tuple:
        """A per-down-block tuple of an int-or-tuple field."""
        return _per_block(getattr(self, name), len(self.block_out_channels), name)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "UNetConfig":
        """From a diffusers config.json dict (or an ml_collections dict); unknown keys are an error."""
        return dataclass_from_diffusers(cls, config, DIFFUSERS_CLASS_NAME, "UNet")

    def to_diffusers_dict(self) -> dict[str, Any]:
        """The config.json diffusers writes for this model."""
        return dataclass_to_diffusers(self, DIFFUSERS_CLASS_NAME)
