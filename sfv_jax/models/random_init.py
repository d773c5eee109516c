"""Random weights for a model built abstractly, drawn on the host with numpy.

Initialising a module eagerly compiles one small XLA program per parameter shape (about 30 s
for the tiny UNet on 2 CPU cores), and jitting the constructor compiles one huge program. The
models here only need torch's default init, so we draw it with numpy, one tensor at a time:
kernels U(+-1/sqrt(fan_in)) (torch's kaiming_uniform(a=sqrt(5))), biases 0, norm scales 1,
and any parameter that declares an `init_value` (the mix factors) gets that value.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sfv_jax.models.nnx_state import AbstractModel, flatten, unflatten_into


def random_params(model: AbstractModel, seed: int = 0) -> dict[str, jax.Array]:
    """{dotted key: array} for every parameter of `model`, deterministic in `seed`."""
    return random_values(model.shapes, model.metadata(), seed)


def random_tree(tree: Mapping, metadata: Mapping[str, dict], seed: int = 0) -> dict:
    """random_values for a nested pure dict of ShapeDtypeStructs (a slice of a model's params), same nesting."""
    return unflatten_into(tree, random_values(flatten(tree), metadata, seed))


def random_values(shapes: Mapping[str, jax.ShapeDtypeStruct], metadata: Mapping[str, dict],
                  seed: int = 0) -> dict[str, jax.Array]:
    """{dotted key: array} for parameters given by their shapes and variable metadata (both by dotted key)."""
    rng = np.random.default_rng(seed)
    params = {}
    for key, shape in shapes.items():
        leaf = key.rsplit(".", 1)[-1]
        if "init_value" in metadata[key]:
            value = np.full(shape.shape, metadata[key]["init_value"], np.float32)
        elif leaf == "kernel" or leaf.endswith("embedding"):
            fan_in = int(np.prod(shape.shape[:-1])) if len(shape.shape) > 1 else 1
            bound = 1.0 / np.sqrt(fan_in)
            value = rng.uniform(-bound, bound, shape.shape).astype(np.float32)
        elif leaf == "scale":
            value = np.ones(shape.shape, np.float32)
        else:
            value = np.zeros(shape.shape, np.float32)
        params[key] = jnp.asarray(value, dtype=shape.dtype)
    return params


def random_module(build: Callable[[], nnx.Module], seed: int = 0) -> nnx.Module:
    """Builds `build()` abstractly, then fills it with host-drawn random weights."""
    model = AbstractModel(build)
    return model.merge(random_params(model, seed))
