"""NNX parameter state without the modules: abstract models, and flat views of their parameters.

A flat view maps dotted paths to arrays: {"down_blocks.0.resnets.1.conv1.kernel": array}. Converters,
checkpoints and the trainer fill models built abstractly (no memory) through these views.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import jax
from flax import nnx

from sfv_jax.models.init_rngs import StaticRngs


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """A nested dict (an nnx pure dict) -> {dotted path: leaf}."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def unflatten_into(template: Mapping, flat: Mapping[str, Any], prefix: str = "") -> dict:
    """The nested dict shaped like `template` whose leaves are flat[dotted path] (inverse of flatten)."""
    out = {}
    for key, value in template.items():
        path = f"{prefix}{key}"
        out[key] = unflatten_into(value, flat, path + ".") if isinstance(value, Mapping) else flat[path]
    return out


def param_metadata(params: nnx.State) -> dict[str, dict]:
    """Each parameter's variable metadata (e.g. init_value), by dotted path."""
    return {".".join(map(str, path)): variable.get_metadata() for path, variable in nnx.to_flat_state(params)}


def flat_params(module: nnx.Module) -> dict[str, jax.Array]:
    """Every nnx.Param of `module` by dotted path (arrays, or ShapeDtypeStructs for an abstract module)."""
    return flatten(nnx.to_pure_dict(nnx.state(module, nnx.Param)))


class AbstractModel:
    """A module built without allocating memory: its graph, its parameter shapes, and a way to fill them.

    Attributes:
      graphdef, params_state, rest_state: nnx.split(module, nnx.Param, ...) of the abstract module.
      tree: the parameters as a nested pure dict of ShapeDtypeStructs (the layout train states and
        Orbax trees use).
      shapes: the same leaves by dotted path.
    """

    def __init__(self, build: Callable[..., nnx.Module]):
        """`build(rngs)` constructs the module from the rngs it is given.

        The rngs are sfv_jax.models.init_rngs.StaticRngs, which keep abstract construction linear
        in the number of parameters (see there why nnx.Rngs does not).
        """
        takes_rngs = len(inspect.signature(build).parameters) > 0
        abstract = nnx.eval_shape(lambda: build(StaticRngs(0)) if takes_rngs else build())
        self.graphdef, self.params_state, self.rest_state = nnx.split(abstract, nnx.Param, ...)
        self.tree: dict = nnx.to_pure_dict(self.params_state)
        self.shapes: dict[str, jax.ShapeDtypeStruct] = flatten(self.tree)

    def metadata(self) -> dict[str, dict]:
        """Each parameter's variable metadata (e.g. init_value), by dotted path."""
        return param_metadata(self.params_state)

    def merge(self, params: Mapping[str, jax.Array]) -> nnx.Module:
        """The concrete module holding `params` (a flat dict with exactly the abstract keys)."""
        return self.merge_tree(unflatten_into(self.tree, params))

    def merge_tree(self, tree: Mapping) -> nnx.Module:
        """The module holding `tree` (a nested pure dict shaped like self.tree; arrays or tracers).

        Leaves self.params_state untouched, so it is safe inside a jitted function.
        """
        return nnx.merge(self.graphdef, tree, self.rest_state)
