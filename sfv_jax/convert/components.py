"""The pipeline components sfv-jax converts, by diffusers' (or transformers') class name.

Each entry says how to build the Flax module from its config, how its weights are named and
mapped (the rulebook), and how to move it between a diffusers component folder and sfv-jax.
The CLI and the checkpoint code only go through here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from flax import nnx

from sfv_jax.convert import image_encoder as image_encoder_convert
from sfv_jax.convert import unet as unet_convert
from sfv_jax.convert import vae as vae_convert
from sfv_jax.convert.clip_rules import CLIP_RULES
from sfv_jax.convert.unet_rules import UNET_RULES
from sfv_jax.convert.vae_rules import VAE_RULES
from sfv_jax.models import (AutoencoderKLTemporalDecoder, CLIPVisionConfig, CLIPVisionModelWithProjection,
                            ModelOptions, UNetConfig, UNetSpatioTemporalConditionModel, VAEConfig)


@dataclasses.dataclass(frozen=True)
class Component:
    class_name: str
    module_type: type
    config_from_dict: Callable[[dict], Any]
    build: Callable[[Any, ModelOptions, nnx.Rngs], nnx.Module]
    from_diffusers: Callable[..., nnx.Module]
    to_diffusers: Callable[..., None]
    rules: tuple
    weights_name: str  # "diffusion_pytorch_model" (diffusers) or "model" (transformers)
    config_to_dict: Callable[[Any], dict] = lambda config: config.to_diffusers_dict()

    def config_dict(self, module: nnx.Module) -> dict:
        """The module's config as the JSON its diffusers/transformers folder holds (read back by config_from_dict)."""
        return self.config_to_dict(module.config)


COMPONENTS: dict[str, Component] = {
    "UNetSpatioTemporalConditionModel": Component(
        "UNetSpatioTemporalConditionModel", UNetSpatioTemporalConditionModel, UNetConfig.from_dict,
        lambda config, options, rngs: UNetSpatioTemporalConditionModel(config, options, rngs=rngs),
        unet_convert.unet_from_diffusers, unet_convert.unet_to_diffusers, UNET_RULES, unet_convert.WEIGHTS_NAME),
    "AutoencoderKLTemporalDecoder": Component(
        "AutoencoderKLTemporalDecoder", AutoencoderKLTemporalDecoder, VAEConfig.from_dict,
        lambda config, options, rngs: AutoencoderKLTemporalDecoder(config, options, rngs=rngs),
        vae_convert.vae_from_diffusers, vae_convert.vae_to_diffusers, VAE_RULES, vae_convert.WEIGHTS_NAME),
    "CLIPVisionModelWithProjection": Component(
        "CLIPVisionModelWithProjection", CLIPVisionModelWithProjection, CLIPVisionConfig.from_dict,
        lambda config, options, rngs: CLIPVisionModelWithProjection(config, options, rngs=rngs),
        image_encoder_convert.image_encoder_from_diffusers, image_encoder_convert.image_encoder_to_diffusers,
        CLIP_RULES, image_encoder_convert.WEIGHTS_NAME, lambda config: config.to_transformers_dict()),
}

# Component folder name inside a pipeline folder -> the class it must hold.
PIPELINE_COMPONENTS = {"unet": "UNetSpatioTemporalConditionModel", "vae": "AutoencoderKLTemporalDecoder",
                       "image_encoder": "CLIPVisionModelWithProjection"}

# Pipeline sub-folders without weights whose config sfv-jax carries in the checkpoint, so that
# export can write a pipeline folder diffusers loads: folder -> the JSON file it must hold.
PIPELINE_CONFIG_FILES = {"scheduler": "scheduler_config.json", "feature_extractor": "preprocessor_config.json"}


def class_name_of_config(config: dict) -> str | None:
    """diffusers configs name their class in _class_name, transformers configs in architectures."""
    name = config.get("_class_name")
    if name is None and isinstance(config.get("architectures"), list) and config["architectures"]:
        name = config["architectures"][0]
    return name if isinstance(name, str) else None


def component_for_config(config: dict, where: str) -> Component:
    from sfv_jax.errors import CheckpointError
    class_name = class_name_of_config(config)
    if class_name not in COMPONENTS:
        raise CheckpointError(f"{where}: holds a {class_name or 'model of unknown class'}; sfv-jax converts "
                              f"{', '.join(COMPONENTS)}")
    return COMPONENTS[class_name]


def component_for_module(module: nnx.Module) -> Component:
    for component in COMPONENTS.values():
        if isinstance(module, component.module_type):
            return component
    raise TypeError(f"{type(module).__name__} is not a module sfv-jax can save; it saves "
                    f"{', '.join(c.module_type.__name__ for c in COMPONENTS.values())}")


def component_for_class(class_name: str, where: str) -> Component:
    from sfv_jax.errors import CheckpointError
    if class_name not in COMPONENTS:
        raise CheckpointError(f"{where}: holds a {class_name}; this sfv-jax knows {', '.join(COMPONENTS)}")
    return COMPONENTS[class_name]
