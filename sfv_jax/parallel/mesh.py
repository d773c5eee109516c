"""The ("data", "fsdp", "tensor") device mesh built from config.mesh."""

from __future__ import annotations

import math

import jax
from jax.sharding import AxisType

MESH_AXES = ("data", "fsdp", "tensor")


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) sizes; at most one may be -1, meaning the devices the others leave."""
    sizes = [int(mesh_config[name]) for name in MESH_AXES]
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes {dict(zip(MESH_AXES, sizes))}: use positive sizes and at most one -1")
    fixed = math.prod(s for s in sizes if s != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(f"{num_devices} devices do not split into mesh {dict(zip(MESH_AXES, sizes))}")
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                         f"{num_devices} are available; set one of mesh.data/fsdp/tensor to -1")
    return tuple(sizes)


def make_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
    """jax.make_mesh over `devices` (default: all) with Auto axis types; activate it with jax.set_mesh."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(mesh_config, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)
