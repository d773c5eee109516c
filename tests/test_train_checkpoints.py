"""Train-state checkpoints (sfv_jax.train.checkpoints): frozen fields written once per workdir, restore of both
layouts."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from sfv_jax.train.checkpoints import TrainCheckpoints
from sfv_jax.train.model_state import ModelTrainState
from tests.train_helpers import tree_equal


def _state(step: int) -> ModelTrainState:
    """A small state whose trained trees change with `step` and whose frozen encoders (1 MB) do not."""
    trained = {"w": jnp.full((64, 64), float(step)), "b": jnp.arange(8.0) + step}
    encoders = {"vae": {"kernel": jnp.linspace(0, 1, 256 * 1024).reshape(512, 512)}, "image_encoder": {"x": jnp.ones(3)}}
    return ModelTrainState(step=jnp.asarray(step, jnp.int32), rng=jax.random.PRNGKey(step), params=trained,
                           ema=jax.tree.map(lambda a: a * 0.5, trained), opt={"mu": jax.tree.map(jnp.zeros_like, trained)},
                           encoders=encoders)


def _abstract(state):
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), state)


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def test_frozen_fields_are_written_once_and_restored_with_every_step(tmp_path):
    """Two saves: WORKDIR/frozen holds the encoders and is not rewritten by the second save; the step folders hold
    no encoders (each is < 1/4 of the frozen folder's bytes); restoring either step gives the saved state bit for
    bit, encoders included. Catches frozen weights in every checkpoint, a frozen folder rewritten at each save, or
    a restore that leaves the encoders out (None) or takes them from the wrong place."""
    checkpoints = TrainCheckpoints(str(tmp_path / "checkpoints"), keep=None, async_save=False)
    checkpoints.save(1, _state(1), {"iterator": 1})
    frozen = tmp_path / "frozen"
    first_write = os.stat(frozen).st_mtime_ns, sorted(os.listdir(frozen))
    checkpoints.save(2, _state(2), {"iterator": 2})
    assert (os.stat(frozen).st_mtime_ns, sorted(os.listdir(frozen))) == first_write
    stored = ocp.PyTreeCheckpointer().metadata(str(tmp_path / "checkpoints" / "2" / "state"))
    stored = getattr(stored, "item_metadata", stored)
    stored = getattr(stored, "tree", stored)
    assert "params" in stored and not stored.get("encoders")
    assert 4 * _folder_bytes(tmp_path / "checkpoints" / "2") < _folder_bytes(frozen)
    for step in (1, 2):
        state, position, at = checkpoints.restore(_abstract(_state(0)), step)
        assert at == step and position == {"iterator": step}
        assert tree_equal(state, _state(step))
    checkpoints.close()


def test_a_step_written_with_its_frozen_fields_still_restores(tmp_path):
    """A workdir from before the frozen folder (the step holds the whole state, no WORKDIR/frozen): restore reads
    the encoders from the step; the next save then writes the frozen folder and a step without them, and both
    steps restore. Catches old workdirs that no longer resume."""
    directory = str(tmp_path / "checkpoints")
    manager = ocp.CheckpointManager(directory, item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                                              "data": ocp.JsonCheckpointHandler()})
    manager.save(1, args=ocp.args.Composite(state=ocp.args.PyTreeSave(_state(1)), data=ocp.args.JsonSave({"i": 1})))
    manager.wait_until_finished()
    manager.close()
    checkpoints = TrainCheckpoints(directory, keep=None, async_save=False)
    state, _, _ = checkpoints.restore(_abstract(_state(0)))
    assert tree_equal(state, _state(1)) and not os.path.exists(tmp_path / "frozen")
    checkpoints.save(2, _state(2), {"i": 2})
    assert os.path.isdir(tmp_path / "frozen")
    assert tree_equal(checkpoints.restore(_abstract(_state(0)), 1)[0], _state(1))
    assert tree_equal(checkpoints.restore(_abstract(_state(0)), 2)[0], _state(2))
    checkpoints.close()



@pytest.mark.parametrize("where, dtype", [("ema", jnp.float32), ("params", jnp.bfloat16), ("opt", jnp.float32)])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_state_holding_nan_or_inf_is_refused_and_nothing_is_written(tmp_path, where, dtype, bad):
    """A save of a state with one bad element in any trained tree (float32 or bfloat16) raises CheckpointError
    naming the step and leaves no step folder; the last good step stays the latest. Catches a checkpoint writer
    that trusts the step (the step programs no longer check the state), one that skips bfloat16 leaves, or one that
    writes first and checks after."""
    from sfv_jax.errors import CheckpointError
    checkpoints = TrainCheckpoints(str(tmp_path / "checkpoints"), keep=None, async_save=False)
    checkpoints.save(1, _state(1), {"iterator": 1})
    state = _state(2)
    tree = jax.tree.map(lambda a: a.astype(dtype), getattr(state, where))
    first = jax.tree.leaves(tree)[0]
    tree = jax.tree.map(lambda a: a.at[(-1,) * a.ndim].set(bad) if a is first else a, tree)
    with pytest.raises(CheckpointError, match="refusing to write checkpoint 2"):
        checkpoints.save(2, state.replace(**{where: tree}), {"iterator": 2})
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"] and checkpoints.latest_step() == 1
    checkpoints.close()


SHARDED_CHECK = """
import json, os, sys
sys.path.insert(0, os.getcwd())
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from sfv_jax.train.checkpoints import holds_only_finite
mesh = jax.make_mesh((2, 2), ("data", "fsdp"))
put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))
rows = jnp.arange(64.0).reshape(8, 8)
verdicts = {}
for name, spec in (("sharded", P("fsdp")), ("replicated", P())):
    for row in (0, 7):  # the first device's shard, the last one's
        verdicts[f"{name} row {row}"] = holds_only_finite({"w": put(rows.at[row, 3].set(jnp.nan), spec)})
verdicts["clean"] = holds_only_finite({"w": put(rows, P("fsdp")), "b": put(jnp.ones(4), P())})
print("RESULT" + json.dumps(verdicts))
"""


def test_the_finite_check_reads_every_shard_of_a_sharded_array():
    """On 4 CPU devices (a 2 x 2 data x fsdp mesh): a NaN in the first or in the last device's shard of an
    fsdp-sharded array, or in a replicated one, is found; a clean state passes. Catches a check that reads only the
    first device's shard (or the process's first), or that skips replicated arrays."""
    import json
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run([sys.executable, "-c", SHARDED_CHECK], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-2000:]
    verdicts = json.loads(lines[-1][len("RESULT"):])
    assert verdicts == {"sharded row 0": False, "sharded row 7": False, "replicated row 0": False,
                        "replicated row 7": False, "clean": True}, verdicts
