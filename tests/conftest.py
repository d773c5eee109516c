import os
import shutil
import tempfile

import torch

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
