"""config.step_programs (sfv_jax.parallel.step_programs): how the train step is compiled, and its bad values.

That the two programs compute what the fused step does is checked per tensor in tests/test_parallel.py (the
sharded runs jit the step as two programs, the single-device runs as one) and by the bench's and plan's tests.
"""

from __future__ import annotations

import ml_collections
import pytest

from sfv_jax import cli
from sfv_jax.config import load_config
from sfv_jax.errors import ConfigError
from sfv_jax.parallel.step_programs import step_programs


@pytest.mark.parametrize("file", ["configs/tiny_sfv.py:micro", "configs/sfv_svd.py", "configs/toy.py:teacher",
                                  "configs/toy.py:vae", "configs/svd_finetune.py"])
def test_every_train_config_compiles_the_step_as_two_programs_by_default(file):
    """Catches a config (or a config written before the field) that silently falls back to the fused program,
    whose compile on XLA:CPU takes ~1.4x as long (BENCHMARKS.md "Compile cost by structure")."""
    assert step_programs(load_config(file, [])) == "split"
    assert step_programs(ml_collections.ConfigDict({"seed": 0})) == "split"
    assert step_programs(load_config(file, ["step_programs=fused"])) == "fused"


def test_an_unknown_value_stops_train_in_one_line_before_the_workdir_exists(tmp_path, capsys):
    """Catches a misspelt value that trains anyway (as one program or the other), a traceback instead of one line
    naming the key and its values, and a workdir left behind by a run that never started."""
    with pytest.raises(ConfigError, match="step_programs='two'"):
        step_programs(ml_collections.ConfigDict({"step_programs": "two"}))
    workdir = tmp_path / "run"
    code = cli.main(["train", "--config", "configs/tiny_sfv.py:micro", "--workdir", str(workdir),
                     "--config.step_programs=two"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "step_programs='two'" in err and "'split' or 'fused'" in err
    assert not workdir.exists()
