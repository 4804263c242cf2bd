"""An open `fluid://` file: a seekable, read-only view of one listed version of a file.

Every byte it returns comes from the version it was opened at (its entry's version and
file id), or the read raises StaleVersion (ESTALE) saying to open it again; never a
mix of two versions.
The position is per thread: a thread starts where the file was last positioned by any
thread and then keeps its own. Code that shares one handle between threads and does
`seek` then `read` as two calls (duckdb's fsspec bridge does) then reads where it
sought, not where another thread sought meanwhile. One thread sees an ordinary file.
Keeps the last block it read, so small sequential reads (CSV parsers, tar readers) cost
one block fetch per block, not one per call.
"""
from __future__ import annotations

import io
import threading
from concurrent.futures import Future

from .. import blocks
from ..errors import StaleVersion


class FluidFile(io.RawIOBase):
    def __init__(self, fs, path: str, entry: dict) -> None:
        super().__init__()
        self.fs, self.path, self.details = fs, path, entry
        self.size = entry["size"]
        self._pos = threading.local()
        self._last = 0                               # where a new thread starts
        self._block: tuple[int, int, memoryview | bytes] | None = None   # (bs, index, data)
        self._ahead: dict[tuple[int, int], Future] = {}   # (bs, index) -> background fetch
        self._next_block, self._hinted = 0, 0        # for large sequential reads

    @property
    def loc(self) -> int:
        return getattr(self._pos, "at", self._last)

    @loc.setter
    def loc(self, value: int) -> None:
        self._pos.at = self._last = value

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.loc

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.loc, io.SEEK_END: self.size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence {whence}")
        if base + offset < 0:
            raise ValueError("negative seek position")
        self.loc = base + offset
        return self.loc

    def _stale(self, exc: StaleVersion) -> StaleVersion:
        """The version this file was opened at is gone from the under store: forget the
        cached entry (the next open lists it again) and say so."""
        self.fs.invalidate_cache(self.path)
        return StaleVersion(f"fluid://{self.path} changed in the under store while it was "
                            f"open ({exc}); open it again")

    def read(self, size: int = -1) -> bytes:
        try:
            return self._read(size)
        except StaleVersion as exc:
            raise self._stale(exc) from None

    def _read(self, size: int = -1) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        loc = self.loc
        end = self.size if size is None or size < 0 else min(self.size, loc + size)
        if loc >= end:
            return b""
        bs = self.fs.client.cluster()["block_size"]
        first, last = loc // bs, (end - 1) // bs
        if first == last and (end - loc) < bs:
            data = self._cached_block(first, bs)
            off = loc - first * bs
            out = bytes(data[off:off + end - loc])
        else:   # always the version this file was opened at: never a mix of two versions
            out = self.fs.client.read(self.details, loc, end)
            self._hint_ahead(first, last)
        self.loc = loc + len(out)
        return out

    def _hint_ahead(self, first: int, last: int) -> None:
        """A large sequential reader: have the owners of the next reads' blocks fetch
        them now, so they are cached when the reader gets there."""
        if not self.fs.readahead or self._next_block != first:
            self._next_block, self._hinted = last + 1, last + 1     # a seek: start over
            return
        client = self.fs.client
        n = blocks.block_count(self.size, client.cluster()["block_size"])
        span = last - first + 1
        for j in range(max(last + 1, self._hinted), min(n, last + 1 + span + self.fs.readahead)):
            client.prefetch(self.details, j)
            self._hinted = j + 1
        self._next_block = last + 1

    read1 = read

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:
        """Read into the caller's buffer; large reads go straight from the local tier
        files into it (the fastest way to read a big file through fluid://)."""
        try:
            return self._readinto(buffer)
        except StaleVersion as exc:
            raise self._stale(exc) from None

    def _readinto(self, buffer) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        view = memoryview(buffer).cast("B")
        loc = self.loc
        want = min(len(view), max(0, self.size - loc))
        bs = self.fs.client.cluster()["block_size"]
        if want < bs:
            data = self._read(want)
            view[:len(data)] = data
            return len(data)
        n = self.fs.client.read_into(self.details, loc, view[:want])
        self._hint_ahead(loc // bs, (loc + max(n, 1) - 1) // bs)
        self.loc = loc + n
        return n

    def _cached_block(self, index: int, bs: int):
        """A whole block of the version this file was opened at. If that version is gone
        from the under store (StaleVersion), the read fails: reopen the file. Blocks are
        kept by (block size, index): a cluster started again with another block size
        while the file is open never answers with a block of the old size.
        A reader moving from block i-1 to i is sequential: blocks i+1.. are fetched in the
        background (readahead), so a cold stream overlaps the under store's latency."""
        held = self._block            # one read of the shared slot: threads may replace it
        if held is not None and held[:2] == (bs, index):
            return held[2]
        fut = self._take_ahead((bs, index))
        data = None
        if fut is not None:
            try:
                data = fut.result()
            except Exception:  # noqa: BLE001 - fetch it again below, errors and all
                data = None
        if data is None:
            data = self.fs.client.block(self.details, index)
        self._block = (bs, index, data)
        if held is not None and held[:2] == (bs, index - 1) and self.fs.readahead:
            self._read_ahead(index, bs)
        return data

    def _take_ahead(self, at: tuple[int, int]) -> Future | None:
        """The background fetch of block (block size, index) `at` (its budget given
        back), if any."""
        fut = self._ahead.pop(at, None)
        if fut is not None:
            self.fs.client.readahead.give(at[0])
        return fut

    def _read_ahead(self, index: int, bs: int) -> None:
        """Fetch the next blocks in the background, as far as the process's readahead
        budget (shared by every open file) allows."""
        client = self.fs.client
        last = blocks.block_count(self.size, bs) - 1
        for at in [at for at in list(self._ahead) if at[0] != bs or at[1] <= index]:
            fut = self._take_ahead(at)
            if fut is not None:
                fut.cancel()
        for j in range(index + 1, min(last, index + self.fs.readahead) + 1):
            if (bs, j) not in self._ahead:
                if not client.readahead.take(bs):
                    break                      # over budget: read it when it is asked for
                self._ahead[(bs, j)] = client.executor().submit(client.block, self.details, j)
                client.counters["readahead"] += 1

    def close(self) -> None:
        self._block = None
        for at in list(self._ahead):
            fut = self._take_ahead(at)
            if fut is not None:
                fut.cancel()
        super().close()
