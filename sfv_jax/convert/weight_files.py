"""Finding and reading the weight files of one diffusers / transformers component folder."""

from __future__ import annotations

import json
import os
import re

import numpy as np

from sfv_jax.convert.safetensors_io import SafetensorsFile
from sfv_jax.errors import CheckpointError
from sfv_jax.fileio import read_json_object


def read_config(folder: str, name: str = "config.json") -> dict:
    path = os.path.join(folder, name)
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: folder not found; pass a diffusers component folder such as .../unet")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: missing; a diffusers component folder holds {name} next to its weights")
    return read_json_object(path)


def weight_paths(folder: str, weights_name: str, variant: str | None = None) -> list[str]:
    """The safetensors files of a component: single-file or sharded (with an index), plain or variant.

    weights_name is "diffusion_pytorch_model" (diffusers) or "model" (transformers). With
    variant=None the plain weights are used, else the only variant present (e.g. fp16).
    """
    def candidates(v):
        """Single file, then the index names diffusers/transformers write (and the older one)."""
        if not v:
            return [f"{weights_name}.safetensors", f"{weights_name}.safetensors.index.json"]
        return [f"{weights_name}.{v}.safetensors", f"{weights_name}.safetensors.index.{v}.json",
                f"{weights_name}.{v}.safetensors.index.json"]

    variant_pattern = re.compile(
        rf"{re.escape(weights_name)}\.(?:(\w+)(?:-\d+-of-\d+)?\.safetensors|safetensors\.index\.(\w+)\.json)$")
    present = set()
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            match = variant_pattern.match(name)
            if match:
                present.add(match.group(1) or match.group(2))
    variants = [variant] if variant else [None] + sorted(present)
    for v in variants:
        single, *indexes = (os.path.join(folder, name) for name in candidates(v))
        if os.path.isfile(single):
            return [single]
        for index in filter(os.path.isfile, indexes):
            try:
                with open(index) as f:
                    weight_map = json.load(f)["weight_map"]
            except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
            return [os.path.join(folder, name) for name in sorted(set(weight_map.values()))]
    wanted = f"{weights_name}{'.' + variant if variant else ''}.safetensors"
    raise CheckpointError(f"{folder}: no {wanted} (or sharded .safetensors.index.json) found; "
                          f"sfv-jax reads safetensors weights only")


class TensorSource:
    """All tensors of a component across its (possibly sharded) safetensors files."""

    def __init__(self, paths: list[str]):
        self.files = [SafetensorsFile(p) for p in paths]
        self._where: dict[str, SafetensorsFile] = {}
        for f in self.files:
            for key in f.keys():
                if key in self._where:
                    raise CheckpointError(f"{f.path}: tensor {key!r} also appears in {self._where[key].path}")
                self._where[key] = f

    @property
    def description(self) -> str:
        return ", ".join(f.path for f in self.files)

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._where[key].shape(key)

    def get(self, key: str) -> np.ndarray:
        return self._where[key].get(key)
