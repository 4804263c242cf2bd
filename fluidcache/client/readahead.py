"""Readahead: which blocks a sequential reader of an open file gets ahead, and the
budget all open files of a process share.

Owns: the one readahead policy (pure: indices in, a range of indices out) and the
process's readahead budget. The reader (reader.py) hands the blocks this policy picks
to the right place: nothing for a block a local tier holds, else a prefetch hint to its
owner while the budget allows.
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
    and reaches past it; then the next `depth + span - 1` blocks (span: the blocks of
    this read) are wanted, each block asked for once. The first read of a file, a seek,
    or a new block size start over (a header read alone never reads ahead)."""

    __slots__ = ("depth", "block_size", "prev", "asked")

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.block_size = 0
        self.prev = -2          # the last block of the previous read (-2: none yet)
        self.asked = 0          # blocks below this index were asked for already

    def after(self, block_size: int, first: int, last: int, count: int) -> range:
        """A read covered blocks `first..last` of a file of `count` blocks: the blocks
        to get ahead now (often none)."""
        prev, self.prev = self.prev, last
        if block_size != self.block_size:
            self.block_size, prev = block_size, -2
        if not self.depth or not (prev <= first <= prev + 1 < last + 1):
            self.asked = last + 1                # not sequential: start over
            return _NONE
        start = max(last + 1, self.asked)
        stop = min(count, last + self.depth + (last - first + 1))
        if start >= stop:
            return _NONE
        self.asked = stop
        return range(start, stop)


__all__ = ["Budget", "Readahead"]
