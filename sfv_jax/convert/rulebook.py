"""The rulebook engine: ordered, two-way rename + layout rules between torch and Flax keys.

A rule pairs a torch key template with a Flax key template, e.g.
    Rule("{m}.to_out.0.weight", "{m}.to_out.kernel", KERNEL)
`{name}` matches any dotted path, `{name:regex}` a path matching regex. The first rule whose
template matches wins, in either direction, so one list serves import and export and the
round trip is exact by construction.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

IDENTITY = "identity"
# torch (out, in, *kernel) <-> Flax (*kernel, in, out): Linear, Conv2d and Conv3d alike.
KERNEL = "kernel"

_PLACEHOLDER = re.compile(r"\{(\w+)(?::([^{}]+))?\}")


def _compile(template: str) -> re.Pattern:
    pattern, pos = "", 0
    for match in _PLACEHOLDER.finditer(template):
        pattern += re.escape(template[pos:match.start()])
        pattern += f"(?P<{match.group(1)}>{match.group(2) or '.+'})"
        pos = match.end()
    return re.compile(pattern + re.escape(template[pos:]))


def _fill(template: str, groups: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: groups[m.group(1)], template)


@dataclasses.dataclass(frozen=True)
class Rule:
    torch: str
    flax: str
    layout: str = IDENTITY

    def __post_init__(self):
        object.__setattr__(self, "_torch_re", _compile(self.torch))
        object.__setattr__(self, "_flax_re", _compile(self.flax))

    def to_flax(self, key: str) -> str | None:
        match = self._torch_re.fullmatch(key)
        return _fill(self.flax, match.groupdict()) if match else None

    def to_torch(self, key: str) -> str | None:
        match = self._flax_re.fullmatch(key)
        return _fill(self.torch, match.groupdict()) if match else None


# The rules every diffusers model shares; model rule files put their special cases first.
NORM_NAMES = r"(?:.+\.)?(?:norm\d*|norm_in|norm_out|conv_norm_out|group_norm|\w*layer_?norm\w*)"
COMMON_RULES = (
    Rule("{n:" + NORM_NAMES + "}.weight", "{n}.scale"),
    Rule("{n:" + NORM_NAMES + "}.bias", "{n}.bias"),
    Rule("{m}.mix_factor", "{m}.mix_factor"),
    Rule("{m}.weight", "{m}.kernel", KERNEL),
    Rule("{m}.bias", "{m}.bias"),
)


def flax_key_for(rules, torch_key: str) -> tuple[str, str] | None:
    """(flax_key, layout) of the first matching rule, or None."""
    for rule in rules:
        key = rule.to_flax(torch_key)
        if key is not None:
            return key, rule.layout
    return None


def torch_key_for(rules, flax_key: str) -> tuple[str, str] | None:
    """(torch_key, layout) of the first matching rule, or None."""
    for rule in rules:
        key = rule.to_torch(flax_key)
        if key is not None:
            return key, rule.layout
    return None


def to_flax_layout(array: np.ndarray, layout: str) -> np.ndarray:
    if layout == KERNEL and array.ndim >= 2:
        return np.transpose(array, tuple(range(2, array.ndim)) + (1, 0))
    return array


def to_torch_layout(array: np.ndarray, layout: str) -> np.ndarray:
    if layout == KERNEL and array.ndim >= 2:
        return np.transpose(array, (array.ndim - 1, array.ndim - 2) + tuple(range(array.ndim - 2)))
    return array


def torch_shape(flax_shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    if layout == KERNEL and len(flax_shape) >= 2:
        return (flax_shape[-1], flax_shape[-2]) + tuple(flax_shape[:-2])
    return tuple(flax_shape)


def flax_shape(torch_shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    if layout == KERNEL and len(torch_shape) >= 2:
        return tuple(torch_shape[2:]) + (torch_shape[1], torch_shape[0])
    return tuple(torch_shape)
