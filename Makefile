# Quick start: `make demo` and `make test` on a fresh machine with Python 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned in pyproject.toml; pip picks the CPU wheel from the local disk when present.
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: demo test test-slow bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.base-installed: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e ".[test]"
	touch $@ $(VENV)/.base-installed

demo: $(VENV)/.base-installed
	$(BIN)/sfv-jax demo --config configs/tiny_sfv.py:micro --workdir demo_out --compilation-cache .jax_cache

# Two pytest workers, one test file each at a time: most of the suite's time is XLA compiling, which runs on
# one core. TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile --durations=25 tests

test-slow: $(VENV)/.test-installed
	$(BIN)/python -m pytest -m slow -s tests

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info demo_out .jax_cache
