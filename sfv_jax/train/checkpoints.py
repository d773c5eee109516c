"""Train-state checkpoints of a workdir: Orbax CheckpointManager under WORKDIR/checkpoints/<step>/.

Each step folder holds two items: `state` (the TrainState arrays, written shard by shard from
wherever they live) and `data` (the data iterator's JSON position). Orbax writes a step into a
temporary folder and renames it when complete, so a process killed at any moment leaves only
complete steps behind; restore takes the latest complete one. Every process of a multi-host run
calls save and restore together.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint._src.metadata import array_metadata_store  # the default ArrayHandler's store; no public path

from sfv_jax.errors import CheckpointError
from sfv_jax.train.state import TrainState


# Orbax's replica-parallel save splits every array that several devices hold into one slice per
# replica, each cut by an eager jax slice: ~0.3 ms of dispatch per slice, ~7 s per save of the tiny
# micro config's ~2000 arrays on 4 CPU devices (the time goes to slicing, not writing). Arrays whose
# per-replica slice would be under this size are written whole by one replica instead; the large
# ones (SVD's 3x3 conv kernels, tens of MB) still spread their writes over the replicas.
MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL = 1 << 20


def _state_handler() -> ocp.PyTreeCheckpointHandler:
    """The PyTree handler of the `state` item: Orbax's defaults but for the replica-parallel threshold.

    Same on-disk format as Orbax's StandardSave (OCDBT, one entry per array leaf), so checkpoints
    written before or by plain Orbax read back the same.
    """
    scalar = ocp.type_handlers.ScalarHandler()
    registry = ocp.type_handlers.create_type_handler_registry(
        (int, scalar), (float, scalar), (np.number, scalar), (np.ndarray, ocp.type_handlers.NumpyHandler()),
        (jax.Array, ocp.type_handlers.ArrayHandler(
            array_metadata_store=array_metadata_store.Store(),
            min_slice_bytes_for_replica_parallel=MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL)))
    return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


class TrainCheckpoints:
    """Save / restore of (TrainState, data position) every `every` steps, keeping the last `keep`."""

    def __init__(self, directory: str, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(directory)  # Orbax refuses relative paths
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
            "state": _state_handler(), "data": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, data_position: dict, state_finite: bool = True) -> None:
        """Starts an (async) save of `state` at `step`.

        state_finite: the train step's own check of the trainable trees (metrics["state_finite"]); a state
        holding NaN or inf is refused, so the last good checkpoint stays the latest.
        """
        if not state_finite:
            raise CheckpointError(f"refusing to write checkpoint {step}: the train state holds NaN or inf")
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                                                        data=ocp.args.JsonSave(data_position)), force=True)

    def restore(self, abstract_state: TrainState, step: int | None = None) -> tuple[TrainState, dict, int]:
        """(state, data position, step) of `step` (default: the latest), read into abstract_state's shardings."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{self.directory}: holds no complete checkpoint")
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(abstract_state, restore_args=ocp.checkpoint_utils.construct_restore_args(
                    abstract_state)), data=ocp.args.JsonRestore()))
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise CheckpointError(f"{self.directory}/{step}: does not match this config's train state "
                                  f"({str(e).splitlines()[0]}); use a new --workdir for a changed model") from None
        return restored["state"], restored["data"], step

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
