#!/usr/bin/env bash
# The GPU check of sfv-jax (tools/gpu_check/__main__.py) on a machine that cannot reach a package registry:
# installs the wheels in .whl/ (tools/gpu_wheels.sh fetched them beforehand) into a private folder, then
# runs the check from this tree with the machine's own jax (never a carried one). Finishes within about
# 7 minutes on one H200; writes $OUT/gpu_check.json and $OUT/gpu_check.log ($OUT defaults to ./gpu_check_out).
#
#   tools/gpu_check.sh                       # every section, full size
#   tools/gpu_check.sh --dry-run             # tiny sizes (meant for a CPU)
#   tools/gpu_check.sh --sections train --budget train=400 --micro-batches 4,2,1
#   tools/gpu_check.sh --sections train --train-override model.attention=cudnn
#   tools/gpu_check.sh --sections train --train-override step_programs=fused   # the step as one program
#
# PYTHON picks the interpreter (default python3: on the lent machine, the one with torch and jax).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-./gpu_check_out}"
mkdir -p "$OUT" || exit 2
export OUT
SITE=""
if compgen -G ".whl/*.whl" >/dev/null; then
  if compgen -G ".whl/jax*.whl" >/dev/null; then
    echo "gpu_check.sh: .whl/ holds a jax wheel; the check must run on the machine's own jax: remove it" >&2
    exit 2
  fi
  SITE=/tmp/sfv_gpu_check_site
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || { echo "gpu_check.sh: installing .whl/*.whl failed" >&2; exit 2; }
fi
# This tree first (sfv_jax, configs, tests' reference helpers), then the carried wheels, then what was there.
export PYTHONPATH="$PWD${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PYTHON" -m tools.gpu_check --out "$OUT" "$@"
