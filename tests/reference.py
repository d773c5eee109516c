"""Shared helpers of the parity tests: random torch weights, error measures, layout moves."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import torch
from safetensors.torch import save_file

from sfv_jax.convert.engine import import_params
from sfv_jax.convert.weight_files import TensorSource
from sfv_jax.models.nnx_state import AbstractModel

DATA = os.path.join(os.path.dirname(__file__), "data", "svd-xt-configs")


def rel_err(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def randomize_(model: torch.nn.Module, seed: int, weight_std: float = 0.05) -> None:
    """Perturbs every parameter so that no norm, bias or mix factor sits at its trivial init.

    weight_std is the noise added to the other weights (0 keeps torch's init, for full-size models).
    """
    gen = torch.Generator().manual_seed(seed)
    noise = lambda p, std: torch.randn(p.shape, generator=gen) * std
    norms = {name for name, m in model.named_modules() if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm))}
    with torch.no_grad():
        for name, p in model.named_parameters():
            owner, _, leaf = name.rpartition(".")
            if owner in norms:
                p.copy_((1.0 if leaf == "weight" else 0.0) + noise(p, 0.3))
            elif leaf == "mix_factor":
                p.copy_(noise(p, 1.0))
            elif weight_std:
                p.add_(noise(p, weight_std))


def channels_last(t: torch.Tensor) -> jax.Array:
    """torch (N, C, *spatial) -> jax (N, *spatial, C)."""
    return jnp.asarray(np.moveaxis(t.detach().numpy(), 1, -1))


def channels_first(x) -> np.ndarray:
    """jax (N, *spatial, C) -> numpy (N, C, *spatial)."""
    return np.moveaxis(np.asarray(x), -1, 1)


def convert_submodule(torch_module: torch.nn.Module, build, rules, tmp_path, name: str = "weights"):
    """Saves a torch module's state dict as safetensors and loads it into the Flax module that
    `build(rngs)` constructs, through the real rulebook engine."""
    path = os.path.join(tmp_path, f"{name}.safetensors")
    save_file({k: v.contiguous() for k, v in torch_module.state_dict().items()}, path)
    model = AbstractModel(build)
    return model.merge(import_params(TensorSource([path]), rules, model.shapes, name))
