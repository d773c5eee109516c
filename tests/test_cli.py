"""The `sfv-jax` entry point as a new user meets it: --help and --version (no model, no JAX work)."""

from __future__ import annotations

import os
import re

import pytest

from sfv_jax.cli import build_parser, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_help_description_names_every_command(capsys):
    """Catches: a hand-written description that lists only some commands (it once said "convert, export, demo"
    while sample, train and bench existed too)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    description = text[text.index("Commands:"):text.index("Run sfv-jax COMMAND")]
    commands = list(build_parser()._subparsers._group_actions[0].choices)
    assert {"convert", "export", "demo", "sample", "train", "bench"} <= set(commands)
    for command in commands:
        assert re.search(rf"\b{command}\b", description), (command, description)


def test_version_is_the_package_version(capsys):
    """Catches: a missing --version, or one that disagrees with pyproject.toml."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        version = re.search(r'^version = "([^"]+)"', f.read(), re.M).group(1)
    assert capsys.readouterr().out.strip() == f"sfv-jax {version}"
