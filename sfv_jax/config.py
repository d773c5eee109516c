"""Loading ml_collections config files with command-line overrides; unknown keys are errors."""

from __future__ import annotations

import ast
import importlib.util
import os
import sys

import ml_collections

from sfv_jax.errors import ConfigError


def load_config(spec: str, overrides: list[str] | tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """Loads "path/to/file.py[:variant]" and applies "a.b=value" overrides.

    Values are parsed as Python literals (falling back to strings). The config is locked, so an
    override of a key the file does not define is an error that names the key.
    """
    path, _, variant = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} not found; pass e.g. configs/tiny.py")
    project_root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if project_root not in sys.path:  # config files import their siblings as `configs.<name>`
        sys.path.insert(0, project_root)
    module_spec = importlib.util.spec_from_file_location(f"_sfv_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        config = module.get_config(variant) if variant else module.get_config()
    except Exception as e:  # a broken config file is the user's to fix; say where it broke
        raise ConfigError(f"{path}: cannot load config ({type(e).__name__}: {e})") from None
    config.lock()
    for override in overrides:
        apply_override(config, override)
    return config


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Sets "a.b.c=value" on a locked config, naming the key when it does not exist."""
    key, sep, raw = override.partition("=")
    if not sep:
        raise ConfigError(f"config override {override!r} must look like key=value")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    *parents, leaf = key.split(".")
    node = config
    for i, name in enumerate(parents):
        if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
            raise ConfigError(f"unknown config key {'.'.join(parents[:i + 1])!r} (in override {override!r})")
        node = node[name]
    if leaf not in node:
        raise ConfigError(f"unknown config key {key!r}; known keys here: {sorted(node.keys())}")
    try:
        node[leaf] = value
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key {key!r}: {e}") from None


def split_overrides(extra: list[str]) -> list[str]:
    """["--config.a.b=1", "--config.c", "2"] -> ["a.b=1", "c=2"]; anything else is an error."""
    overrides, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--config."):
            raise ConfigError(f"unrecognised argument {arg!r}; config overrides look like --config.a.b=value")
        key, sep, value = arg[len("--config."):].partition("=")
        if not sep:
            if i + 1 >= len(extra):
                raise ConfigError(f"{arg} needs a value: {arg}=VALUE")
            value, i = extra[i + 1], i + 1
        overrides.append(f"{key}={value}")
        i += 1
    return overrides
