"""JAX's persistent compilation cache: compiled programs survive the process.

The SVD UNet takes tens of seconds to compile on a CPU; with a cache directory a second run of
the same shapes loads the program instead of compiling it.
"""

from __future__ import annotations

import os

ENV_VAR = "SFV_JAX_COMPILATION_CACHE"


def enable_compilation_cache(directory: str | None) -> str | None:
    """Turns the cache on in `directory` (or $SFV_JAX_COMPILATION_CACHE); returns the directory used."""
    directory = directory or os.environ.get(ENV_VAR)
    if not directory:
        return None
    import jax
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
