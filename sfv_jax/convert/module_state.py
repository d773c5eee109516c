"""Flat views of an NNX module's parameters: {"down_blocks.0.resnets.1.conv1.kernel": array}."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import jax
from flax import nnx

from sfv_jax.models.init_rngs import StaticRngs


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def _unflatten_into(template: Mapping, flat: Mapping[str, Any], prefix: str = "") -> dict:
    out = {}
    for key, value in template.items():
        path = f"{prefix}{key}"
        out[key] = _unflatten_into(value, flat, path + ".") if isinstance(value, Mapping) else flat[path]
    return out


def flat_params(module: nnx.Module) -> dict[str, jax.Array]:
    """Every nnx.Param of `module` by dotted path (arrays, or ShapeDtypeStructs for an abstract module)."""
    return _flatten(nnx.to_pure_dict(nnx.state(module, nnx.Param)))


class AbstractModel:
    """A module built without allocating memory: its graph, its parameter shapes, and a way to fill them."""

    def __init__(self, build: Callable[..., nnx.Module]):
        """`build(rngs)` constructs the module from the rngs it is given.

        The rngs are sfv_jax.models.init_rngs.StaticRngs, which keep abstract construction linear
        in the number of parameters (see there why nnx.Rngs does not).
        """
        takes_rngs = len(inspect.signature(build).parameters) > 0
        abstract = nnx.eval_shape(lambda: build(StaticRngs(0)) if takes_rngs else build())
        self.graphdef, self.params_state, self.rest_state = nnx.split(abstract, nnx.Param, ...)
        self.shapes: dict[str, jax.ShapeDtypeStruct] = flat_params(abstract)

    def metadata(self) -> dict[str, dict]:
        """Each parameter's variable metadata (e.g. init_value), by dotted path."""
        return {".".join(map(str, path)): variable.get_metadata()
                for path, variable in nnx.to_flat_state(self.params_state)}

    def merge(self, params: Mapping[str, jax.Array]) -> nnx.Module:
        """The concrete module holding `params` (a flat dict with exactly the abstract keys)."""
        state = self.params_state
        nnx.replace_by_pure_dict(state, _unflatten_into(nnx.to_pure_dict(state), params))
        return nnx.merge(self.graphdef, state, self.rest_state)
