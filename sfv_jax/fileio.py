"""Output that is either complete or absent: nothing half-written is left on disk."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from sfv_jax.errors import SfvError


@contextlib.contextmanager
def atomic_directory(path: str, overwrite: bool = False):
    """Yields a temporary sibling folder to write into; renames it to `path` on success.

    On any error (or Ctrl-C) the temporary folder is removed and `path` is untouched.
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite:
        raise SfvError(f"{path} already exists; choose another --out or delete it first")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        yield tmp
        if os.path.exists(path):
            shutil.rmtree(path)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
