"""Batches of clips, sharded over processes, shuffled per epoch, and resumable exactly.

The stream is an endless concatenation of epochs; epoch e visits the source in the order of a permutation
drawn from (seed, e). Global row g of the stream is clip perm_e[g mod N] with e = g div N, and its temporal
window comes from a generator seeded by (seed, e, g mod N): every row is a pure function of (seed, g). So
- process p of P decodes only rows [p*b, (p+1)*b) of each global batch (b = B / P), and the P local batches
  concatenated equal the one-process global batch;
- the position (the next global row) is the whole state: restoring it resumes the exact stream;
- a batch may straddle an epoch boundary, so B need not divide N (a 3-video folder trains with B = 4).
Rows are decoded by a thread pool a few batches ahead (ffmpeg, PIL and numpy release the GIL).
RowOrder holds the bookkeeping (permutations, rows, position) so the latent cache's iterator streams the same way.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging

import numpy as np

from sfv_jax.data.sources import DataError, VideoSource, make_source

log = logging.getLogger(__name__)


class RowOrder:
    """The stream's bookkeeping, shared by every iterator over an indexable set of N clips (the clip iterator
    here, the latent cache's in latent_cache.py): epoch permutations, this process's rows, the position.

    `row` is the global row the next batch starts at; get_state/set_state save and restore it.
    """

    def __init__(self, num_clips: int, global_batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1):
        if global_batch_size < 1 or process_count < 1 or global_batch_size % process_count:
            raise DataError(f"global_batch_size={global_batch_size} must be a positive multiple of the process "
                            f"count {process_count}; change global_batch_size")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} not in [0, {process_count})")
        if num_clips < 1:
            raise DataError("the data holds no clips; point the config at a non-empty dataset")
        self.num_clips = int(num_clips)
        self.global_batch_size = int(global_batch_size)
        self.local_batch_size = self.global_batch_size // process_count
        self.seed = int(seed)
        self.process_index, self.process_count = int(process_index), int(process_count)
        self._seed_word = self.seed & (2 ** 63 - 1)  # SeedSequence takes non-negative words only
        self._perms: dict[int, np.ndarray] = {}
        self.row = 0

    def _permutation(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self._seed_word, epoch, 0]).permutation(self.num_clips)
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}  # keep memory flat
            self._perms[epoch] = perm
        return perm

    def row_index(self, row: int) -> tuple[int, int]:
        """(epoch, source index) of global row `row` of the stream."""
        epoch, pos = divmod(int(row), self.num_clips)
        return epoch, int(self._permutation(epoch)[pos])

    def window_rng(self, row: int) -> np.random.Generator:
        """The generator that picks global row `row`'s temporal window: a pure function of (seed, row)."""
        epoch, pos = divmod(int(row), self.num_clips)
        return np.random.default_rng([self._seed_word, epoch, 1, pos])

    def local_rows(self, start: int) -> list[tuple[int, int]]:
        """[(global row, source index)] of this process's rows of the global batch starting at row `start`."""
        first = start + self.process_index * self.local_batch_size
        return [(row, self.row_index(row)[1]) for row in range(first, first + self.local_batch_size)]

    def get_state(self) -> dict:
        """JSON-serialisable position: the next batch starts at row epoch * num_clips + index."""
        epoch, index = divmod(self.row, self.num_clips)
        return {"epoch": int(epoch), "index": int(index), "num_clips": self.num_clips, "seed": self.seed}

    def set_state(self, state: dict) -> None:
        """Moves to a position from get_state; the next batches are those an uninterrupted run would give."""
        epoch, index = int(state["epoch"]), int(state["index"])
        saved = int(state.get("num_clips", self.num_clips))
        if saved != self.num_clips or int(state.get("seed", self.seed)) != self.seed:
            # Not an error: adding videos to a folder (or fixing a broken one) must not block a resume.
            log.warning("data: resuming with %d clips and seed %d, saved with %d clips and seed %s: the batches "
                        "from here differ from the original run's", self.num_clips, self.seed, saved,
                        state.get("seed", self.seed))
            index = min(index, self.num_clips)
        self.row = epoch * self.num_clips + index


class RowStream:
    """What the batch iterators share: a RowOrder, their position (get_state / set_state) and their lifecycle.

    Subclasses implement __next__ and, where they hold resources, close(); `_moved()` runs after set_state.
    """

    def __init__(self, num_clips: int, global_batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1):
        self.order = RowOrder(num_clips, global_batch_size, seed, process_index, process_count)
        self.global_batch_size, self.local_batch_size = self.order.global_batch_size, self.order.local_batch_size
        self.seed = self.order.seed
        self.process_index, self.process_count = self.order.process_index, self.order.process_count

    @property
    def num_clips(self) -> int:
        """Size of the (global) dataset; an epoch is this many rows."""
        return self.order.num_clips

    def row_index(self, row: int) -> tuple[int, int]:
        """(epoch, dataset index) of global row `row` of the stream."""
        return self.order.row_index(row)

    def __iter__(self):
        return self

    def get_state(self) -> dict:
        """JSON-serialisable position: the next batch starts at row epoch * num_clips + index."""
        return self.order.get_state()

    def set_state(self, state: dict) -> None:
        """Moves to a position from get_state; the next batches are those an uninterrupted run would give."""
        self.order.set_state(state)
        self._moved()

    def _moved(self) -> None:
        """Drops whatever was read ahead for the old position."""

    def close(self) -> None:
        """Releases what the iterator holds; it still works afterwards, reopening lazily."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ClipIterator(RowStream):
    """next(it) -> {"frames": uint8 (B // P, T, H, W, 3)}: this process's rows of the next global batch."""

    def __init__(self, source: VideoSource, global_batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1, num_workers: int = 4, prefetch: int = 2):
        super().__init__(len(source), global_batch_size, seed, process_index, process_count)
        self.source = source
        self._pool = concurrent.futures.ThreadPoolExecutor(num_workers) if num_workers > 0 else None
        self._prefetch = max(1, int(prefetch))
        self._pending: collections.deque = collections.deque()  # (batch start row, [futures or arrays])

    @property
    def skipped(self) -> int:
        """Unreadable videos skipped so far (folder source; 0 for the others)."""
        return int(getattr(self.source, "skipped", 0))

    def _clip(self, row: int, index: int) -> np.ndarray:
        return self.source.clip(index, self.order.window_rng(row))

    def _submit(self, start: int) -> None:
        """Queues this process's rows of the global batch that starts at row `start`."""
        jobs = []
        for row, index in self.order.local_rows(start):  # in this thread: permutations are cached without locks
            jobs.append(self._pool.submit(self._clip, row, index) if self._pool else (row, index))
        self._pending.append((start, jobs))

    def __next__(self) -> dict[str, np.ndarray]:
        """{"frames": uint8 (local_batch_size, T, H, W, 3)}."""
        while len(self._pending) < self._prefetch:
            last = self._pending[-1][0] + self.global_batch_size if self._pending else self.order.row
            self._submit(last)
        start, jobs = self._pending.popleft()
        assert start == self.order.row
        if self._pool:
            clips = [job.result() for job in jobs]
        else:
            clips = [self._clip(row, index) for row, index in jobs]
        self.order.row += self.global_batch_size
        return {"frames": np.stack(clips)}

    def _moved(self) -> None:
        for _, jobs in self._pending:
            for job in jobs:
                if isinstance(job, concurrent.futures.Future):
                    job.cancel()
        self._pending.clear()

    def close(self) -> None:
        """Stops the decoding threads; later batches (if any are asked for) decode in the caller's thread."""
        self._moved()
        if self._pool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None



def make_clip_iterator(data_config, global_batch_size: int, seed: int, process_index: int = 0,
                       process_count: int = 1) -> ClipIterator:
    """The iterator the training loop uses: the source from data_config (see sources.make_source), batches of
    global_batch_size split over process_count processes, this process's rows only.

    Every check that can fail (missing folder, no readable video, unknown TFDS name) raises DataError here.
    Optional fields: data_config.num_workers (decoding threads, default 4; 0 decodes in the caller's thread)
    and data_config.prefetch (batches queued ahead, default 2).
    """
    source = make_source(data_config)
    get = data_config.get if hasattr(data_config, "get") else lambda k, d=None: getattr(data_config, k, d)
    return ClipIterator(source, global_batch_size, seed, process_index, process_count,
                        num_workers=int(get("num_workers", 4)), prefetch=int(get("prefetch", 2)))
