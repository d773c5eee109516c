"""Writing a component folder in diffusers format, atomically."""

from __future__ import annotations

import json
import os

import numpy as np
from flax import nnx

from sfv_jax.convert.engine import export_tensors
from sfv_jax.convert.safetensors_io import write_safetensors
from sfv_jax.fileio import atomic_directory
from sfv_jax.models.nnx_state import flat_params


def write_diffusers_component(module: nnx.Module, config: dict, rules, folder: str, weights_name: str,
                              dtype: np.dtype | None = None) -> None:
    """config.json + `weights_name`.safetensors, written to a temporary folder then renamed."""
    with atomic_directory(folder) as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        tensors = export_tensors(flat_params(module), rules, dtype)
        write_safetensors(os.path.join(tmp, f"{weights_name}.safetensors"), tensors)
