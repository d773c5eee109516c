"""The pipeline components sfv-jax converts, by diffusers' class name.

Each entry says how to build the Flax module from its config and how to move it between a
diffusers component folder and sfv-jax. The CLI and the checkpoint code only go through here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from flax import nnx

from sfv_jax.convert import unet as unet_convert
from sfv_jax.models import ModelOptions, UNetConfig, UNetSpatioTemporalConditionModel


@dataclasses.dataclass(frozen=True)
class Component:
    class_name: str
    config_from_dict: Callable[[dict], Any]
    build: Callable[[Any, ModelOptions, nnx.Rngs], nnx.Module]
    from_diffusers: Callable[..., nnx.Module]
    to_diffusers: Callable[..., None]

    def config_dict(self, module: nnx.Module) -> dict:
        return module.config.to_diffusers_dict()


COMPONENTS: dict[str, Component] = {
    "UNetSpatioTemporalConditionModel": Component(
        "UNetSpatioTemporalConditionModel", UNetConfig.from_dict,
        lambda config, options, rngs: UNetSpatioTemporalConditionModel(config, options, rngs=rngs),
        unet_convert.unet_from_diffusers, unet_convert.unet_to_diffusers),
}

# Component folder name inside a pipeline folder -> the class it must hold.
PIPELINE_COMPONENTS = {"unet": "UNetSpatioTemporalConditionModel"}


def component_for_config(config: dict, where: str) -> Component:
    from sfv_jax.errors import CheckpointError
    class_name = config.get("_class_name") or (config.get("architectures") or [None])[0]
    if class_name not in COMPONENTS:
        raise CheckpointError(f"{where}: holds a {class_name or 'model of unknown class'}; sfv-jax converts "
                              f"{', '.join(COMPONENTS)}")
    return COMPONENTS[class_name]
