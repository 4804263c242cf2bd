"""A file of the mount open for writing: bytes taken in order and committed whole.

The file is committed (made visible, everywhere, whole) when the process that opened
it closes it, at fsync, and at the last close of all (a descriptor handed to a child
that outlives the opener). A write after a commit (through a descriptor still open)
writes the file again: the version this handle committed, then more; if that version
is gone from the store (another writer committed since), the write fails with ESTALE
and nothing of the two is mixed. A write out of order fails with ENOTSUP and so does
everything after it on this handle: nothing of a file refused part-way is committed.
Owns: one FluidWriter at a time, the bytes count, the committed entry, the failure.
Never: answer the kernel (ops.py does), or commit after a failure.
"""
from __future__ import annotations

import errno
import logging
import threading

from ..client.file import FluidFile
from ..errors import FluidError, StaleVersion
from .core import errno_of

log = logging.getLogger("fluidcache.mount")
CARRY = 8 << 20                 # bytes read per step when a file is written again


def tgid(pid: int) -> int:
    """The process (thread group) of thread `pid`: FUSE names the calling thread."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return pid


class Failed(OSError):
    pass


class WriteHandle:
    def __init__(self, fs, path: str, exclusive: bool, opener: int) -> None:
        self.fs, self.path, self.opener = fs, path, opener
        self.file = fs.open(path, "xb" if exclusive else "wb")
        self.written = 0
        self.dirty = True               # a new or truncated file is committed even empty
        self.entry: dict | None = None  # the version this handle committed last
        self.error = 0
        self.lock = threading.Lock()

    @property
    def open(self) -> bool:
        return not self.error and not self.file.closed

    def _fail(self, code: int, why: str) -> Failed:
        self.error = code
        log.warning("write %s: %s", self.path, why)
        if not self.file.closed:
            self.file.discard()
        return Failed(code, why)

    def write(self, data: bytes, offset: int) -> int:
        with self.lock:
            if self.error:
                raise Failed(self.error, f"{self.path}: an earlier write failed")
            if offset != self.written:
                raise self._fail(errno.ENOTSUP, f"at {offset} after {self.written} bytes: "
                                 "files are written in order, whole")
            if self.file.closed:
                self._again()
            try:
                self.file.write(data)
            except (OSError, FluidError) as exc:
                raise self._fail(errno_of(exc), f"{type(exc).__name__}: {exc}") from None
            self.written += len(data)
            self.dirty = True
            return len(data)

    def _again(self) -> None:
        """Written after a commit: a new writer with the version committed, then on."""
        self.file = self.fs.open(self.path, "wb")
        if self.written == 0:
            return
        try:
            old = FluidFile(self.fs, self.path, self.entry)
            at = 0
            while at < self.written:
                chunk = old.pread(at, min(CARRY, self.written - at))
                if not chunk:
                    raise StaleVersion(f"{self.path} is shorter than written")
                self.file.write(chunk)
                at += len(chunk)
            old.close()
        except StaleVersion:
            raise self._fail(errno.ESTALE, "another writer committed it since this one "
                                           "did: not written again over it") from None
        except (OSError, FluidError) as exc:
            raise self._fail(errno_of(exc), f"{type(exc).__name__}: {exc}") from None

    def commit(self) -> None:
        """Make what was written visible (raises Failed with the errno)."""
        with self.lock:
            if self.error:
                raise Failed(self.error, f"{self.path}: a write failed, nothing committed")
            if not self.dirty:
                return
            if self.file.closed:
                self._again()
            try:
                self.file.close()
            except (OSError, FluidError) as exc:
                raise self._fail(errno_of(exc), f"close: {type(exc).__name__}: {exc}") \
                    from None
            self.entry, self.dirty = self.file.entry, False

    def drop(self) -> None:
        with self.lock:
            if not self.file.closed:
                self.file.discard()


__all__ = ["Failed", "WriteHandle", "tgid"]
