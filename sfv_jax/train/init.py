"""The weights a run starts from: components of an sfv-jax checkpoint (`init_checkpoint`), or random.

Each objective names the components its state starts from and which of them must come from the checkpoint:
SF-V needs a whole pipeline (unet, vae, image_encoder); the denoise objective fine-tunes what the checkpoint
holds and draws the rest (a teacher starting from a trained VAE's workdir gets a random UNet and CLIP); the
vae objective reads the VAE. A component is read straight into its shards of the state's shardings.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

from flax import nnx

from sfv_jax.convert.svd_pipeline_files import svd_pipeline_files
from sfv_jax.errors import CheckpointError
from sfv_jax.models.nnx_state import flatten
from sfv_jax.models.options import ModelOptions


def _pure(module: nnx.Module) -> dict:
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def _check_shapes(name: str, loaded: dict, abstract: dict, path: str) -> None:
    got = {k: tuple(v.shape) for k, v in flatten(loaded).items()}
    want = {k: tuple(v.shape) for k, v in flatten(abstract).items()}
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()))[:3]
        raise CheckpointError(f"{path}: its {name} does not match config.{'unet' if name == 'unet' else name} "
                              f"(first differences: {diff}); use the config the checkpoint was made with")


@dataclasses.dataclass(frozen=True)
class Component:
    """One model a run's state starts from.

    abstract: its params' shapes (nested dict of ShapeDtypeStruct); random: seed-free draw of torch-default
    random params; required: must come from init_checkpoint when one is given; shardings: the target
    NamedShardings of its params (nested like abstract), or None for the default device.
    """

    abstract: dict
    random: Callable[[], dict]
    required: bool = False
    shardings: dict | None = None


def initial_components(init_checkpoint: str, options: ModelOptions, components: Mapping[str, Component]
                       ) -> tuple[dict[str, dict], dict, dict[str, str]]:
    """({name: params}, pipeline files, {name: "checkpoint" | "random"}) to build a step-0 state from.

    Without init_checkpoint every component is random. With it, every component the checkpoint holds is read
    (shapes checked against the config); a required one it lacks, or a checkpoint holding none of them, is a
    CheckpointError naming what it has.
    """
    if not init_checkpoint:
        return ({name: c.random() for name, c in components.items()}, svd_pipeline_files(),
                {name: "random" for name in components})
    from sfv_jax.checkpoint import load_checkpoint, read_index
    path = init_checkpoint
    index = read_index(path)
    held = sorted(index["components"])
    names = [name for name in components if name in held]
    missing = [name for name, c in components.items() if c.required and name not in held]
    if missing or not names:
        raise CheckpointError(f"{path}: holds {', '.join(held) or 'nothing'}; this run starts from "
                              f"{', '.join(missing or components)} (use a checkpoint or workdir that has "
                              f"{'them' if len(missing or components) > 1 else 'it'}, e.g. a converted SVD pipeline)")
    flat_targets = {name: flatten(components[name].shardings) for name in names
                    if components[name].shardings is not None}
    sharding_for = (lambda name, key, _: flat_targets[name][key]) if flat_targets else None
    try:
        # Loading runs no model, so no activation constraints (they would need an active mesh).
        modules = load_checkpoint(path, dataclasses.replace(options, activation_batch_axes=()), names=names,
                                  sharding_for=sharding_for)
    except KeyError as e:  # a parameter the config's model has and the checkpoint's does not
        raise CheckpointError(f"{path}: does not match the config's models ({e}); use the config it was made "
                              f"with") from None
    params, origin = {}, {}
    for name, c in components.items():
        if name in modules:
            params[name] = _pure(modules[name])
            _check_shapes(name, params[name], c.abstract, path)
            origin[name] = "checkpoint"
        else:
            params[name], origin[name] = c.random(), "random"
    pipeline = index.get("extra", {}).get("pipeline") or svd_pipeline_files()
    return params, pipeline, origin
