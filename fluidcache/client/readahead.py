"""Readahead: which blocks a sequential reader of an open file gets ahead, and the
budget all open files of a process share.

Owns: the one readahead policy (pure: indices in, a range of indices out), the
process's readahead budget, and what the reader keeps per open file (`FileReads`: its
kept block and the fetches ahead it holds, forgotten after a fork, none added once the
file is closed). The reader (reader.py) hands the blocks this policy picks
to the right place while the budget allows: nothing for a block a local tier holds;
for small sequential reads (an open file's kept block) its bytes, fetched in the
background and kept by the file until its next read takes them; for large reads a
prefetch hint to its owner.
Never: do I/O or know where a block is.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import NamedTuple

from .. import blocks
from .conn import FORKS

_NONE = range(0)


class Budget:
    """Bytes shared by many holders (all open files' readahead): `take` or go without."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used = max(0, self.used - n)


RAMP = 8                # a sequential run's window grows to this many times `depth`


class Readahead:
    """One open file's readahead. A read that covers blocks `first..last` is
    sequential when it starts in the block the previous read ended in or the next one
    and reaches past it. Then a small read (one block, kept by the file) wants the next
    `depth` blocks; a large read wants the next `span + depth` (span: its blocks), each
    block asked for once (a block the reader `missed` is asked for again). The window
    grows with the run of sequential reads, doubling each read up to RAMP times `depth`
    (a stream keeps more blocks in flight across the owners, so a store's latency and
    per-connection rate are paid in parallel; the process's budget caps the bytes). A
    seek or a new block size start over; so does a file's first read, unless it is a
    large one from the start (a stream; a header read alone never reads ahead)."""

    __slots__ = ("block_size", "prev", "asked", "run")

    def __init__(self) -> None:
        self.block_size = 0
        self.prev = -2          # the last block of the previous read (-2: none yet)
        self.asked = 0          # blocks below this index were asked for already
        self.run = 0            # sequential reads in a row

    def after(self, block_size: int, first: int, last: int, count: int, depth: int,
              large: bool = False) -> range:
        """A read covered blocks `first..last` of a file of `count` blocks: the blocks
        to get ahead now (often none). `large`: a read of whole blocks, not one through
        the kept block."""
        prev, self.prev = self.prev, last
        if block_size != self.block_size:
            self.block_size, prev = block_size, -2
        if prev == -2 and large and first == 0:
            prev = -1                            # a stream from the start
        if depth <= 0 or not (prev <= first <= prev + 1 < last + 1):
            self.asked, self.run = last + 1, 0   # not sequential: start over
            return _NONE
        self.run = min(self.run + 1, RAMP.bit_length())
        depth *= min(1 << (self.run - 1), RAMP)
        start = max(last + 1, self.asked)
        stop = min(count, last + 1 + depth + (last - first + 1 if large else 0))
        if start >= stop:
            return _NONE
        self.asked = stop
        return range(start, stop)

    def missed(self, index: int) -> None:
        """Block `index` was wanted but not got ahead (over budget): want it again at
        the next sequential read."""
        if index < self.asked:
            self.asked = index


class Kept(NamedTuple):
    """The last whole block an open file read: of this block size and index."""
    block_size: int
    index: int
    data: memoryview | bytes


class FileReads:
    """What the reader keeps for one open file: the entry it was opened at (its
    version), its last block (small reads cost one fetch per block, not one per call)
    and its readahead: the policy's state and the blocks being fetched in the
    background, each holding its length of the process's budget until a read takes
    it, it is dropped, or the file is closed. The readahead state is made only when a
    read has blocks after it."""

    __slots__ = ("entry", "kept", "depth", "ahead", "pending", "budget", "fork", "closed")

    def __init__(self, entry: dict, readahead: int) -> None:
        self.entry = entry
        self.kept: Kept | None = None
        self.depth = readahead
        self.ahead: Readahead | None = None     # made when a read has blocks after it
        # (block size, index) -> the block's bytes being fetched; made on first use
        self.pending: dict[tuple[int, int], Future] | None = None
        self.budget: Budget | None = None        # the budget `pending` holds bytes of
        self.fork = FORKS[0]                     # the process `pending`'s threads are in
        self.closed = False

    def _forked(self) -> bool:
        """Are the background fetches another process's (the file was opened before a
        fork)? No thread here will finish them: forget them, and their budget, which is
        that process's."""
        if self.fork == FORKS[0]:
            return False
        self.fork, self.pending, self.budget, self.ahead, self.kept = \
            FORKS[0], None, None, None, None
        return True

    def add(self, at: tuple[int, int], fut: Future, budget: Budget) -> bool:
        """Hold background fetch `fut` of block `at`; False when the file is closed or
        another thread holds one of that block already (the caller cancels it)."""
        with _ADDING:
            if self.closed or self._forked() or (self.pending and at in self.pending):
                return False
            if self.pending is None:
                self.budget, self.pending = budget, {}
            self.pending[at] = fut
            return True

    def take(self, at: tuple[int, int]) -> Future | None:
        """The background fetch of block (block size, index) `at`, if any; its budget
        is given back."""
        pending = self.pending
        if not pending or self._forked():
            return None
        fut = pending.pop(at, None)
        if fut is not None:
            self.budget.give(blocks.block_length(self.entry["size"], at[0], at[1]))
        return fut

    def drop(self, keep=None) -> None:
        """Cancel the background fetches (those `keep(at)` says no to, if given) and give
        their budget back."""
        if not self.pending or self._forked():
            return
        for at in list(self.pending):
            if keep is None or not keep(at):
                fut = self.take(at)
                if fut is not None:
                    fut.cancel()

    def close(self) -> None:
        """The file is closed: forget its block, cancel its readahead (none is added
        after this, even by a read another thread is in)."""
        with _ADDING:
            self.closed = True
        self.kept = None
        self.drop()


_ADDING = threading.Lock()      # taken when a block move adds readahead, and on close


__all__ = ["Budget", "FileReads", "Kept", "Readahead"]
