"""An open `fluid://` file: a seekable, read-only view of one listed version of a file.

Owns: the file's position. Every byte comes from the process's reader (reader.py),
which keeps the file's last block (small sequential reads, as CSV parsers and tar
readers make them, cost one block fetch per block, not one per call) and reads ahead.
Every byte it returns comes from the version it was opened at (its entry's version and
file id), or the read raises StaleVersion (ESTALE) saying to open it again; never a
mix of two versions.
The position is per thread: a thread starts where the file was last positioned by any
thread and then keeps its own. Code that shares one handle between threads and does
`seek` then `read` as two calls (duckdb's fsspec bridge does) then reads where it
sought, not where another thread sought meanwhile. One thread sees an ordinary file.
Never: do block arithmetic or I/O of its own.
"""
from __future__ import annotations

import io
import threading

from ..errors import StaleVersion
from .readahead import FileReads


class FluidFile(io.RawIOBase):
    def __init__(self, fs, path: str, entry: dict) -> None:
        super().__init__()
        self.fs, self.path, self.details = fs, path, entry
        self.size = entry["size"]
        self._pos = threading.local()
        self._last = 0                               # where a new thread starts
        self._reads = FileReads(entry, fs.readahead)

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
        if self.closed:
            raise ValueError("I/O operation on closed file")
        loc = self.loc
        end = self.size if size is None or size < 0 else min(self.size, loc + size)
        if loc >= end:
            return b""
        try:
            out = self.fs.client.read_at(self._reads, loc, end, self.fs.readahead)
        except StaleVersion as exc:
            raise self._stale(exc) from None
        self.loc = loc + len(out)
        return out

    read1 = read

    def readall(self) -> bytes:
        return self.read(-1)

    def pread(self, offset: int, size: int) -> bytes:
        """Up to `size` bytes at `offset`, the file's position untouched (what a mount's
        kernel asks: many reads of one open file at once, each at its own offset)."""
        if self.closed:
            raise ValueError("I/O operation on closed file")
        end = min(self.size, offset + size)
        if offset >= end:
            return b""
        try:
            return self.fs.client.read_at(self._reads, offset, end, self.fs.readahead)
        except StaleVersion as exc:
            raise self._stale(exc) from None

    def readinto(self, buffer) -> int:
        """Read into the caller's buffer; large reads go straight from the local tier
        files into it (the fastest way to read a big file through fluid://)."""
        if self.closed:
            raise ValueError("I/O operation on closed file")
        loc = self.loc
        try:
            n = self.fs.client.readinto_at(self._reads, loc, memoryview(buffer).cast("B"),
                                           self.fs.readahead)
        except StaleVersion as exc:
            raise self._stale(exc) from None
        self.loc = loc + n
        return n

    def close(self) -> None:
        self._reads.close()            # its kept block, and readahead cancelled
        super().close()
