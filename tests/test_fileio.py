"""sfv_jax.fileio: JSON objects read with one-line errors, outputs complete or absent, with ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from sfv_jax.errors import CheckpointError
from sfv_jax.fileio import atomic_directory, read_json_object, write_file_atomically, write_text_atomically


def test_outputs_get_the_permissions_plain_open_and_mkdir_would_give(tmp_path):
    """A file or folder written atomically reads as one made by open() / os.mkdir under the process's umask.
    Catches the temporary file's 0600 (mkstemp) and folder's 0700 (mkdtemp) kept: rows, tables and checkpoints
    other users of a shared machine could not read."""
    old = os.umask(0o022)
    try:
        write_text_atomically(str(tmp_path / "row.json"), "{}")
        with atomic_directory(str(tmp_path / "ckpt")) as tmp:
            write_text_atomically(os.path.join(tmp, "index.json"), "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "row.json").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "ckpt").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "ckpt" / "index.json").st_mode) == 0o644


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    """An error while writing leaves neither the output nor a temporary sibling. Catches a half-written file under
    the final name, or temporaries piling up beside it."""
    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_file_atomically(str(tmp_path / "table.md"), fail)
    with pytest.raises(RuntimeError):
        with atomic_directory(str(tmp_path / "ckpt")):
            raise RuntimeError("stopped")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("text, why", [(None, "missing"), ('{"a": ', "not valid JSON"), ("[1]", "expected a JSON object"),
                                       ("\xff", "not valid JSON")])
def test_read_json_object_fails_in_one_line_naming_the_file(tmp_path, text, why):
    """Missing, truncated, non-object and non-UTF-8 files: one CheckpointError line naming the path. Catches a
    bare json.load traceback or a list accepted as a config."""
    path = tmp_path / "config.json"
    if text is not None:
        path.write_bytes(text.encode("latin-1"))
    with pytest.raises(CheckpointError) as error:
        read_json_object(str(path))
    assert "\n" not in str(error.value) and str(path) in str(error.value) and why in str(error.value)
