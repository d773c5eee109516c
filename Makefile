# Quick start: `make demo` and `make test` on a fresh machine with Python 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned in pyproject.toml; pip picks the CPU wheel from the local disk when present.
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: demo demo-journey test test-slow bench clean toy

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.base-installed: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e ".[test]"
	touch $@ $(VENV)/.base-installed

# The shipped toy SF-V student (models/toy/student) turns a held-out synthetic first frame into a clip in one
# UNet pass: GIF, contact sheet, timings and the shapes' motion in demo_out/.
demo: $(VENV)/.base-installed
	$(BIN)/sfv-jax demo --workdir demo_out --compilation-cache .jax_cache

# The random-weights journey: a tiny SVD written as diffusers -> convert -> SF-V train -> sample -> export.
demo-journey: $(VENV)/.base-installed
	$(BIN)/sfv-jax demo --journey --config configs/tiny_sfv.py:micro --workdir demo_out/journey --compilation-cache .jax_cache

# Two pytest workers, one test file each at a time: most of the suite's time is XLA compiling, which runs on
# one core. TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile --durations=25 tests

test-slow: $(VENV)/.test-installed
	$(BIN)/python -m pytest -m slow -s tests

# The toy reproduction (README "Toy SVD stack"): VAE -> teacher -> SF-V student and its two one-head ablations
# -> the evaluation table. Each stage resumes its workdir if interrupted (a finished one restores and stops).
# The teacher's denoise step runs as one program: 7-10% faster CPU steps than the default two programs, which
# would only save 15-40 s of its compile (BENCHMARKS.md "Compile cost by structure").
TOY ?= runs/toy
TOY_TRAIN := $(BIN)/sfv-jax train --compilation-cache .jax_cache

toy: $(VENV)/.test-installed
	$(TOY_TRAIN) --config configs/toy.py:vae --workdir $(TOY)/vae
	$(TOY_TRAIN) --config configs/toy.py:teacher --workdir $(TOY)/teacher --config.init_checkpoint=$(TOY)/vae \
	    --config.step_programs=fused
	$(TOY_TRAIN) --config configs/toy.py:sfv --workdir $(TOY)/student --config.init_checkpoint=$(TOY)/teacher
	$(TOY_TRAIN) --config configs/toy.py:sfv --workdir $(TOY)/student_spatial \
	    --config.init_checkpoint=$(TOY)/teacher --config.disc.heads=spatial
	$(TOY_TRAIN) --config configs/toy.py:sfv --workdir $(TOY)/student_temporal \
	    --config.init_checkpoint=$(TOY)/teacher --config.disc.heads=temporal
	$(BIN)/python tools/toy_table.py --teacher $(TOY)/teacher --student $(TOY)/student \
	    --student-spatial $(TOY)/student_spatial --student-temporal $(TOY)/student_temporal --out $(TOY)/table

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info demo_out .jax_cache
