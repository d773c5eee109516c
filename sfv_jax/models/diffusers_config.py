"""Strict reading and writing of diffusers config.json dicts for the model config dataclasses."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

DIFFUSERS_VERSION = "0.42.1"


def dataclass_from_diffusers(cls, config: Mapping[str, Any], class_name: str, what: str):
    """Builds dataclass `cls` from a diffusers config dict; unknown keys are an error.

    Keys starting with "_" (diffusers' metadata) are ignored except _class_name, which must be
    `class_name` when present. Lists become tuples so configs stay hashable and comparable.
    """
    found = config.get("_class_name", class_name)
    if found != class_name:
        raise ValueError(f"config is for {found}, not {class_name}")
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in config.items() if not k.startswith("_")}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"unknown {what} config keys {unknown}; known keys: {sorted(fields)}")
    return cls(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in values.items()})


def dataclass_to_diffusers(config, class_name: str) -> dict[str, Any]:
    """The config.json diffusers writes for a model with this config."""
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
    return {"_class_name": class_name, "_diffusers_version": DIFFUSERS_VERSION, **values}
