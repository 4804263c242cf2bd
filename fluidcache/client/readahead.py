"""Readahead: which blocks a sequential reader of an open file gets ahead, and the
budget all open files of a process share.

Owns: the one readahead policy (pure: indices in, a range of indices out) and the
process's readahead budget. The reader (reader.py) hands the blocks this policy picks
to the right place while the budget allows: nothing for a block a local tier holds;
for small sequential reads (an open file's kept block) its bytes, fetched in the
background and kept by the file until its next read takes them; for large reads a
prefetch hint to its owner.
Never: do I/O or know where a block is.
"""
from __future__ import annotations

import threading

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


class Readahead:
    """One open file's readahead. A read that covers blocks `first..last` is
    sequential when it starts in the block the previous read ended in or the next one
    and reaches past it. Then a small read (one block, kept by the file) wants the next
    `depth` blocks; a large read wants the next `span + depth` (span: its blocks), each
    block asked for once (a block the reader `missed` is asked for again). The first
    read of a file, a seek, or a new block size start over (a header read alone never
    reads ahead)."""

    __slots__ = ("block_size", "prev", "asked")

    def __init__(self) -> None:
        self.block_size = 0
        self.prev = -2          # the last block of the previous read (-2: none yet)
        self.asked = 0          # blocks below this index were asked for already

    def after(self, block_size: int, first: int, last: int, count: int, depth: int,
              large: bool = False) -> range:
        """A read covered blocks `first..last` of a file of `count` blocks: the blocks
        to get ahead now (often none). `large`: a read of whole blocks, not one through
        the kept block."""
        prev, self.prev = self.prev, last
        if block_size != self.block_size:
            self.block_size, prev = block_size, -2
        if depth <= 0 or not (prev <= first <= prev + 1 < last + 1):
            self.asked = last + 1                # not sequential: start over
            return _NONE
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


__all__ = ["Budget", "Readahead"]
