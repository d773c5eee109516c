"""Files whole: JSON objects read with one-line errors, and output that is either complete or absent (nothing
half-written is left on disk)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

from sfv_jax.errors import CheckpointError, SfvError


def read_json_object(path: str) -> dict:
    """A JSON file that must hold an object; every failure is a one-line CheckpointError naming it."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: missing")
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value


def _umask() -> int:
    """The process's umask. Read from /proc where it can be: setting it to read it (the fallback) briefly changes it
    for every thread, e.g. a checkpointer's writers."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


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
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; the result should be a folder like mkdir's
        if os.path.exists(path):
            shutil.rmtree(path)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def refuse_existing(path: str) -> None:
    """SfvError before any work when an output path exists (outputs are never overwritten)."""
    if os.path.exists(path):
        raise SfvError(f"{os.path.abspath(path)} already exists; choose another --out or delete it first")


def write_file_atomically(path: str, write) -> None:
    """Calls write(tmp_path) on a temporary sibling of `path` (same extension), then renames it to `path`."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    stem, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.tmp-", suffix=ext, dir=os.path.dirname(path))
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; the result should be a file like open()'s
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomically(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    write_file_atomically(path, write)
