"""Train-state checkpoints of a workdir: Orbax CheckpointManager under WORKDIR/checkpoints/<step>/.

Each step folder holds two items: `state` (the train state's arrays, written shard by shard from
wherever they live) and `data` (the data iterator's JSON position). Orbax writes a step into a
temporary folder and renames it when complete, so a process killed at any moment leaves only
complete steps behind; restore takes the latest complete one. Every process of a multi-host run
calls save and restore together.

The frozen fields of a state (FROZEN_FIELDS: SF-V's discriminator backbone, the VAE and CLIP that encode
batches) never change during a run, so they are written once, at the first save, to WORKDIR/frozen/ (an
Orbax checkpoint of {field: tree}), and the step folders hold the state without them (those fields None). For
SVD-sized models this takes the frozen ~1.5 B parameters out of every checkpoint. A step folder written
before this layout (holding the frozen fields itself) still restores: where WORKDIR/frozen/ is absent, the
frozen fields are read from the step.

A state holding NaN or inf is never written (`holds_only_finite`, checked on the host where the arrays already
go to be written, so the train step's programs carry no per-leaf check for it).
"""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint._src.metadata import array_metadata_store  # the default ArrayHandler's store; no public path

from sfv_jax.errors import CheckpointError
from sfv_jax.train.state import TrainState
from sfv_jax.train.workdir import FROZEN, FROZEN_FIELDS


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


def holds_only_finite(tree) -> bool:
    """Whether every floating array of `tree` is free of NaN and inf; every process of a run gets the same answer.

    Read on the host, shard by shard (each process its own shards), rather than by a jitted check: a jitted
    `tree_stats.all_finite` of a UNet's weights and EMA (~3000 leaves) costs 10-20 s of XLA compile, inside the
    train step or beside it, for a check that only a checkpoint needs.
    """
    floating = [leaf for leaf in jax.tree.leaves(tree) if jax.numpy.issubdtype(leaf.dtype, jax.numpy.inexact)]
    # Each process reads its own shards; of a shard that several devices hold, one copy.
    pieces = [shard.data for leaf in floating for shard in leaf.addressable_shards if shard.replica_id == 0]
    ok = all(np.isfinite(np.asarray(piece)).all() for piece in pieces)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        ok = bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))
    return ok


def split_frozen(state):
    """(state with its frozen fields set to None, {field: tree} of the frozen fields it holds)."""
    frozen = {f: getattr(state, f) for f in FROZEN_FIELDS if getattr(state, f, None) is not None}
    return state.replace(**{f: None for f in frozen}), frozen


def _restore(path: str, target):
    """Orbax restore of the arrays of `target` (ShapeDtypeStructs with shardings) found in the tree at path;
    keys of the stored tree that target lacks are not read."""
    return ocp.Checkpointer(_state_handler()).restore(path, args=ocp.args.PyTreeRestore(
        target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))


class TrainCheckpoints:
    """Save / restore of (train state, data position) every `every` steps, keeping the last `keep`; the state's
    frozen fields once per workdir in `frozen_directory` (default: a sibling of `directory` named "frozen")."""

    def __init__(self, directory: str, keep: int, async_save: bool = True, frozen_directory: str | None = None):
        self.directory = os.path.abspath(directory)  # Orbax refuses relative paths
        self.frozen_directory = os.path.abspath(frozen_directory or os.path.join(os.path.dirname(self.directory),
                                                                                 FROZEN))
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
            "state": _state_handler(), "data": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, data_position: dict) -> None:
        """Starts an (async) save of `state` at `step`.

        A state whose trained fields hold NaN or inf is refused (CheckpointError, nothing written), so the last
        good checkpoint stays the latest.
        """
        trained, frozen = split_frozen(state)
        if not holds_only_finite(trained):
            raise CheckpointError(f"refusing to write checkpoint {step}: the train state holds NaN or inf")
        if frozen and not os.path.isdir(self.frozen_directory):
            # Written once, synchronously, into a temporary folder Orbax renames when complete: a run killed
            # meanwhile writes it again at its next save.
            ocp.Checkpointer(_state_handler()).save(self.frozen_directory, args=ocp.args.PyTreeSave(frozen))
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(trained),
                                                        data=ocp.args.JsonSave(data_position)), force=True)

    def restore(self, abstract_state: TrainState, step: int | None = None) -> tuple[TrainState, dict, int]:
        """(state, data position, step) of `step` (default: the latest), read into abstract_state's shardings."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{self.directory}: holds no complete checkpoint")
        trained, frozen = split_frozen(abstract_state)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(trained, restore_args=ocp.checkpoint_utils.construct_restore_args(
                    trained), partial_restore=True), data=ocp.args.JsonRestore()))
            state = restored["state"]
            if frozen:
                source = self.frozen_directory if os.path.isdir(self.frozen_directory) else os.path.join(
                    self.directory, str(step), "state")
                state = state.replace(**_restore(source, frozen))
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise CheckpointError(f"{self.directory}/{step}: does not match this config's train state "
                                  f"({str(e).splitlines()[0]}); use a new --workdir for a changed model") from None
        return state, restored["data"], step

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
