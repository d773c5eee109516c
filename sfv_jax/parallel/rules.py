"""Logical axes of parameters and their mapping to mesh axes (the rule table lives in config.sharding).

Every array leaf gets logical axis names from its last path key and rank:
  kernel (in, out)                    -> ("embed", "mlp")        linear
  kernel (k..., in, out)              -> ("conv", ..., "embed", "mlp")   conv 1d/2d/3d
  scale / bias / other rank-1 leaves  -> ("vector",)
  anything else (optimiser accumulators with other shapes, scalars) -> no names.
Rules map a logical name to a mesh axis (or tuple of axes, or None). A mapping is kept only where the
mesh axes have more than one device and the dimension divides their size (so specs name only axes that
really split something). Then FSDP: a leaf of at least `fsdp_min_size` elements has its
largest still-unsharded dimension divisible by the fsdp size (the first such on ties) sharded over "fsdp";
smaller leaves stay replicated along "fsdp".
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from jax.sharding import PartitionSpec as P


def logical_axes(last_key, shape: Sequence[int]) -> tuple:
    """Logical axis names of a leaf from its last path key (a str, or None for a list index) and shape."""
    ndim = len(shape)
    if last_key == "kernel" and ndim >= 2:
        return ("conv",) * (ndim - 2) + ("embed", "mlp")
    if ndim == 1 and last_key is not None:
        return ("vector",)
    return (None,) * ndim


def _axis_size(mesh_axes, sizes: Mapping[str, int]) -> int:
    if mesh_axes is None:
        return 1
    names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
    return math.prod(sizes[n] for n in names)


def _uses(mesh_axes, name: str) -> bool:
    if mesh_axes is None:
        return False
    return name == mesh_axes if isinstance(mesh_axes, str) else name in mesh_axes


def spec_for(logical: Sequence, shape: Sequence[int], rules: Sequence, sizes: Mapping[str, int],
             fsdp_min_size: int) -> P:
    """PartitionSpec of one leaf: logical rules, then FSDP on the largest divisible free dimension."""
    table = dict((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes) for name, axes in rules)
    spec = []
    for name, dim in zip(logical, shape):
        axes = table.get(name) if name is not None else None
        size = _axis_size(axes, sizes)
        spec.append(axes if axes is not None and size > 1 and dim % size == 0 else None)
    fsdp = sizes.get("fsdp", 1)
    already = any(_uses(a, "fsdp") for a in spec)
    if fsdp > 1 and not already and math.prod(shape) >= fsdp_min_size:
        free = [i for i, (a, d) in enumerate(zip(spec, shape)) if a is None and d % fsdp == 0]
        if free:
            best = max(free, key=lambda i: (shape[i], -i))
            spec[best] = "fsdp"
    while spec and spec[-1] is None:
        spec.pop()
    return P(*spec)


def batch_axes(rules: Sequence) -> tuple[str, ...]:
    """The mesh axes of the "batch" rule, as a tuple (empty when the batch is not sharded)."""
    axes = dict(rules).get("batch")
    return tuple(axes) if isinstance(axes, (list, tuple)) else ((axes,) if axes else ())


def batch_device_count(mesh, rules: Sequence) -> int:
    """How many devices a batch splits over: the product of the mesh's sizes along the batch rule's axes."""
    return math.prod(mesh.shape[a] for a in batch_axes(rules) if a in mesh.shape)


def batch_spec(rules: Sequence) -> P:
    """Leading-axis sharding of batch arrays: the mesh axes of the "batch" rule."""
    axes = dict(rules).get("batch")
    return P(tuple(axes) if isinstance(axes, (list, tuple)) else axes)
