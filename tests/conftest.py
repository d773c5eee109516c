import os
import shutil
import tempfile

# The suite runs on the CPU, in this process and in every subprocess it starts (they inherit the environment).
# With libtpu installed (the test extra has it, for tests/test_plan.py) a JAX process without JAX_PLATFORMS loads
# libtpu first: on a machine without a TPU it writes ~5 lines of setup warnings to stderr, then falls back to the
# CPU (silently while another process holds /tmp/libtpu_lockfile). Nothing is gained by trying, so the CPU is pinned.
# TPU topologies are still described and compiled under JAX_PLATFORMS=cpu (sfv_jax/plan/topology.py). A caller's
# own JAX_PLATFORMS is kept.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import torch  # noqa: E402

# Parity is measured in float32 on 2 CPU threads; keep both frameworks deterministic.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
torch.manual_seed(0)

# One persistent XLA compilation cache for the whole session, shared by this process and every
# `sfv-jax` subprocess a test starts (they inherit $SFV_JAX_COMPILATION_CACHE): tests that build the
# same tiny models at the same shapes compile each program once. Set at import, before any test
# compiles (JAX reads the directory on its first compile). A fresh directory per session, removed at
# the end, so no run depends on what an earlier one left behind; a directory the caller set is kept.
_SESSION_CACHE = None
if "SFV_JAX_COMPILATION_CACHE" not in os.environ:
    _SESSION_CACHE = tempfile.mkdtemp(prefix="sfv_jax_test_xla_cache_")
    os.environ["SFV_JAX_COMPILATION_CACHE"] = _SESSION_CACHE

from sfv_jax.compilation_cache import enable_compilation_cache  # noqa: E402

enable_compilation_cache(None)


def pytest_sessionfinish(session, exitstatus):
    if _SESSION_CACHE is not None:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


import pytest  # noqa: E402

_MEASURED: list[str] = []


@pytest.fixture
def measured(request):
    """measured(line): a number a test checked against its bound, printed in the run's closing summary
    ("measured numbers"), so `make test` shows e.g. the worst sharded-vs-single leaf without -s. The lines travel
    in the test report's user_properties, so they reach the summary from pytest-xdist workers too."""
    def record(line: str) -> None:
        print(line)
        request.node.user_properties.append(("measured", f"{request.node.name}: {line}"))
    return record


def pytest_runtest_logreport(report):
    if report.when == "call":
        _MEASURED.extend(value for key, value in report.user_properties if key == "measured")


def pytest_terminal_summary(terminalreporter):
    if _MEASURED:
        terminalreporter.section("measured numbers")
        for line in _MEASURED:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def micro_step():
    """The micro config's SF-V step with exact R1, built once per session for every test that trains.

    Unusual loss weights (lambda_recon 0.25, r1_gamma 0.5; the paper's are 0.1 and 1e-5) so that a weight
    hard-coded in the step cannot pass the recombination checks. The step is split as the real one is:
    `gradients` and `apply` jitted separately (one compile each, reused everywhere); `step(state, batch)`
    composes them. Learning rates live in the optimiser state (tests change them without recompiling).
    """
    import jax

    from sfv_jax.train.state import SFVModels, new_state
    from sfv_jax.train.step import make_train_step
    from tests.train_helpers import make_batch, micro_config

    config = micro_config("sfv.r1_mode=exact", "sfv.lambda_recon=0.25", "sfv.r1_gamma=0.5", "optim.g_lr=2e-3",
                          "optim.d_lr=1e-3", "global_batch_size=4", "grad_accum_steps=2")
    models = SFVModels(config)
    train_step = make_train_step(config, models)
    gradients, apply = jax.jit(train_step.gradients), jax.jit(train_step.apply)

    class MicroStep:
        def __init__(self):
            self.config, self.models, self.train_step = config, models, train_step
            self.gradients, self.apply = gradients, apply
            self.fresh = jax.jit(lambda: new_state(config, models))
            self.batch = make_batch(config)

        def step(self, state, batch):
            return apply(state, *gradients(state, batch))

    return MicroStep()
