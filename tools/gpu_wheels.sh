#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels tools/gpu_check.sh installs on the lent GPU machine, which
# reaches no registry: the packages its image lacks (per the lending workplace's package list: diffusers,
# ml-collections, and diffusers' need importlib-metadata with its own need lazy-importer), at the versions
# this project's environment has (pyproject.toml pins them), built for that machine's CPython 3.12 on
# x86-64 Linux. Never jax: the check runs on the machine's own jax and CUDA plugin.
#
#   tools/gpu_wheels.sh                      # the default set
#   tools/gpu_wheels.sh flax==0.12.8         # plus more requirement specs (e.g. the project's flax)
#
# PYTHON picks an interpreter with pip and the project installed (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
NAMES=(diffusers ml-collections importlib-metadata lazy-importer)
read -r -a SPECS <<<"$("$PYTHON" -c '
import importlib.metadata as m, sys
print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' "${NAMES[@]}")"
for spec in "$@"; do
  case "$spec" in
    jax==*|jax|jaxlib*|jax-*) echo "gpu_wheels.sh: $spec: the check uses the machine's own jax" >&2; exit 2;;
  esac
done
rm -rf .whl
mkdir .whl
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${SPECS[@]}" "$@"
echo "gpu_wheels.sh: .whl/ now holds:"
for wheel in .whl/*.whl; do
  # What each wheel needs (extras left out): check these against the machine's package list.
  needs=$(unzip -p "$wheel" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' \
          | sed 's/^Requires-Dist: //' | paste -sd ',' - || true)
  echo "  $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB) needs: ${needs:-nothing}"
done
