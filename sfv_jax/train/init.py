"""The weights a run starts from: a converted SVD checkpoint (`init_checkpoint`) or random (tiny runs)."""

from __future__ import annotations

import dataclasses

from flax import nnx

from sfv_jax.convert.svd_pipeline_files import svd_pipeline_files
from sfv_jax.errors import CheckpointError
from sfv_jax.models.nnx_state import flatten
from sfv_jax.train.state import SFVModels, TrainState


def _pure(module: nnx.Module) -> dict:
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def _check_shapes(name: str, loaded: dict, abstract: dict, path: str, section: str) -> None:
    got = {k: tuple(v.shape) for k, v in flatten(loaded).items()}
    want = {k: tuple(v.shape) for k, v in flatten(abstract).items()}
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()))[:3]
        raise CheckpointError(f"{path}: its {name} does not match config.{section} (first differences: {diff}); "
                              f"use the config the checkpoint was converted for")


def initial_weights(config, models: SFVModels, shardings: TrainState | None = None) -> tuple[dict, dict | None, dict]:
    """(generator params, encoder params or None, pipeline files) to build the step-0 state from.

    With config.init_checkpoint set, reads the unet (and vae / image_encoder when encoding on the
    fly) of that sfv-jax checkpoint, each array straight into its shard of `shardings` (the state's
    NamedShardings); else draws torch-default random weights from config.seed.
    """
    if not config.init_checkpoint:
        return (models.random_generator_params(config.seed), models.random_encoder_params(config.seed + 2),
                svd_pipeline_files())
    from sfv_jax.checkpoint import load_checkpoint, read_index
    path = config.init_checkpoint
    index = read_index(path)
    names = ["unet"] + (["vae", "image_encoder"] if models.encoders is not None else [])
    targets = {"unet": getattr(shardings, "g_params", None)}
    if models.encoders is not None and shardings is not None and shardings.encoders is not None:
        targets.update(shardings.encoders)
    flat_targets = {name: flatten(tree) for name, tree in targets.items() if tree is not None}
    sharding_for = (lambda name, key, _: flat_targets[name][key]) if flat_targets else None
    try:
        # Loading runs no UNet, so no activation constraints (they would need an active mesh).
        options = dataclasses.replace(models.options, activation_batch_axes=())
        modules = load_checkpoint(path, options, names=names, sharding_for=sharding_for)
    except KeyError as e:  # a parameter the config's model has and the checkpoint's does not
        raise CheckpointError(f"{path}: does not match the config's models ({e}); use the config it was converted "
                              f"for") from None
    g_params = _pure(modules["unet"])
    _check_shapes("unet", g_params, models.abstract_g, path, "unet")
    encoders = None
    if models.encoders is not None:
        encoders = {name: _pure(modules[name]) for name in ("vae", "image_encoder")}
        for name in encoders:
            _check_shapes(name, encoders[name], models.abstract_encoders[name], path, name)
    pipeline = index.get("extra", {}).get("pipeline") or svd_pipeline_files()
    return g_params, encoders, pipeline
