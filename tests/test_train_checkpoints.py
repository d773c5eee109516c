"""Train-state checkpoints (sfv_jax.train.checkpoints): frozen fields written once per workdir, restore of both
layouts."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

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
