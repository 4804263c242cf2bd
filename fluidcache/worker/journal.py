"""Files a worker keeps before (async-through) or instead of (must-cache) the under store.

A file is written to `J/ID.data` as it comes (JournalFile: the same write / commit /
abort face as upload.py's uploads), with a checksum per block of the cluster's block
size. At commit the data is fsync'd, then `J/ID.meta` (msgpack: namespace, dataset and
its incarnation, path, size, block checksums, mode, close time, expiry) is written under
a temporary name, fsync'd, renamed, and the directory fsync'd: from then on the file
survives the worker's SIGKILL or restart. A `.data` without its `.meta` is a write never
acknowledged: removed at the next scan. `J` is a directory of this worker's lowest tier
(an SSD, where one is configured): its bytes count against `write_journal` (default:
that tier's quota).
Owns: the journal directory's files and its byte count.
Never: serve a block whose checksum does not match (the only copy is damaged: an error,
never wrong bytes), or run on the server's loop (every call here touches a disk).
"""
from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from dataclasses import dataclass

import msgpack
import xxhash

from ..errors import FluidError, Unavailable

log = logging.getLogger(__name__)
_DATA, _META, _TMP = ".data", ".meta", ".tmp"
_WRITEBACK_EVERY = 8 * 1024**2      # bytes written before their writeback is started


def _start_writeback():
    """Linux's sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE): the disk starts
    writing those pages now, the caller does not wait (RocksDB's bytes_per_sync does
    the same), so the fsync at commit finds little left to write and the kernel never
    stalls the writer on a mountain of dirty pages. None where there is no such call
    (the fsync at commit does it all: slower, as durable)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return lambda fd, offset, n: fn(fd, offset, n, 2)   # 2: SYNC_FILE_RANGE_WRITE


_writeback = _start_writeback()


@dataclass(frozen=True)
class Entry:
    """A file kept in the journal (what its .meta says)."""

    id: str
    ns: str
    ds: str
    uid: str                # the dataset's incarnation
    path: str               # normalized, in the dataset
    size: int
    block_size: int
    sums: tuple             # xxh3_64 of each block
    mode: str               # "async-through" or "must-cache"
    closed: float           # wall-clock time of the close (orders writers of one path)
    expires: float          # wall-clock time it goes (must-cache with a TTL), else 0

    def to_record(self) -> dict:
        return {k: (list(v) if k == "sums" else v) for k, v in self.__dict__.items()}


class Journal:
    def __init__(self, directory: str, block_size: int, quota: int) -> None:
        self.dir, self.block_size, self.quota = directory, block_size, quota
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self.used = 0                       # bytes of data files, kept and being written
        self.by_ns: dict[str, int] = {}     # the same, per namespace (half the quota each)

    def _path(self, fid: str, suffix: str) -> str:
        if not fid.isalnum():               # our own ids only: never a path of a client's
            raise ValueError(f"bad journal id {fid!r:.40}")
        return os.path.join(self.dir, fid + suffix)

    def reserve(self, ns: str, n: int) -> None:
        """Room for `n` more bytes of namespace `ns` (a tenant holds at most half)."""
        with self._lock:
            mine = self.by_ns.get(ns, 0)
            if self.used + n > self.quota or mine + n > self.quota // 2:
                raise Unavailable(f"the write journal is full ({self.used} of {self.quota} "
                                  f"bytes, {mine} of namespace {ns}'s {self.quota // 2}, "
                                  "wait to be uploaded or are kept); sync, remove files, "
                                  "or raise write_journal")
            self.used += n
            self.by_ns[ns] = mine + n

    def release(self, ns: str, n: int) -> None:
        with self._lock:
            self.used = max(0, self.used - n)
            left = self.by_ns.get(ns, 0) - n
            if left > 0:
                self.by_ns[ns] = left
            else:
                self.by_ns.pop(ns, None)

    def open(self, fid: str, ns: str) -> "JournalFile":
        return JournalFile(self, fid, ns)

    def scan(self) -> list[Entry]:
        """The files kept (a restarted worker's), oldest close first; leftovers of
        writes never acknowledged, and files whose data is short, are removed."""
        entries, datas = [], set()
        for name in os.listdir(self.dir):
            stem, ext = os.path.splitext(name)
            if ext == _DATA:
                datas.add(stem)
            elif ext == _TMP:
                _unlink(os.path.join(self.dir, name))
        for name in os.listdir(self.dir):
            stem, ext = os.path.splitext(name)
            if ext != _META:
                continue
            try:
                with open(os.path.join(self.dir, name), "rb") as f:
                    rec = msgpack.unpackb(f.read(1 << 20))
                e = Entry(**{**rec, "sums": tuple(rec["sums"])})
                if e.id != stem or os.path.getsize(self._path(stem, _DATA)) != e.size:
                    raise ValueError("its data is not the size it says")
            except (OSError, ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
                log.error("journal %s: dropping a damaged entry: %s", name, exc)
                self.remove(stem)       # (nothing of it was counted yet)
                datas.discard(stem)
                continue
            datas.discard(stem)
            entries.append(e)
            self.used += e.size
            self.by_ns[e.ns] = self.by_ns.get(e.ns, 0) + e.size
        for stem in datas:                  # written, never acknowledged
            _unlink(self._path(stem, _DATA))
        return sorted(entries, key=lambda e: e.closed)

    def read(self, e: Entry, start: int, length: int) -> bytes:
        """Bytes [start, start + length) of a kept file, each block they touch (in the
        block size it was kept with) checked against its checksum."""
        if start < 0 or length < 0 or start + length > e.size:
            raise FluidError(f"{e.ds}/{e.path}: bytes {start}+{length} are past its end")
        bs = e.block_size
        first, last = start // bs, max(start, start + length - 1) // bs
        with open(self._path(e.id, _DATA), "rb") as f:
            f.seek(first * bs)
            data = f.read(min(e.size, (last + 1) * bs) - first * bs)
        view = memoryview(data)
        for i in range(first, last + 1):
            block = view[(i - first) * bs:(i - first + 1) * bs]
            if i >= len(e.sums) or xxhash.xxh3_64_intdigest(block) != e.sums[i]:
                raise FluidError(f"{e.ds}/{e.path}: block {i} of the only copy (kept "
                                 "until uploaded) is damaged on this worker's disk")
        off = start - first * bs
        return data if off == 0 and length == len(data) else bytes(view[off:off + length])

    def chunks(self, e: Entry):
        """The kept file's bytes, a block at a time, each checked (an upload reads them:
        a damaged copy is never uploaded)."""
        with open(self._path(e.id, _DATA), "rb") as f:
            for i in range(len(e.sums)):
                block = f.read(e.block_size)
                if xxhash.xxh3_64_intdigest(block) != e.sums[i]:
                    raise FluidError(f"{e.ds}/{e.path}: block {i} of the only copy is "
                                     "damaged on this worker's disk; not uploaded")
                if block:
                    yield block

    def uploaded(self, fid: str) -> None:
        """In the store now: its meta goes, so a restart never adopts it again (its data
        is still read until `remove`)."""
        _unlink(self._path(fid, _META))

    def remove(self, fid: str, ns: str = "", size: int = 0) -> None:
        _unlink(self._path(fid, _META))     # the meta first: no half entry is ever adopted
        _unlink(self._path(fid, _DATA))
        self.release(ns, size)


class JournalFile:
    """A file being written into the journal; nothing of it is kept unless committed."""

    def __init__(self, journal: Journal, fid: str, ns: str) -> None:
        self.j, self.id, self.ns = journal, fid, ns
        self.gone = False
        self.path = journal._path(fid, _DATA)
        self.file = open(self.path, "xb")
        os.chmod(self.path, 0o600)
        self.size, self.sums = 0, []
        self._hash, self._in_block = xxhash.xxh3_64(), 0
        self._flushed = 0                   # bytes whose writeback was started

    def write(self, data) -> None:
        self.j.reserve(self.ns, len(data))
        try:
            self.file.write(data)
            end = self.size + len(data)
            if _writeback is not None and end - self._flushed >= _WRITEBACK_EVERY:
                self.file.flush()
                _writeback(self.file.fileno(), self._flushed, end - self._flushed)
                self._flushed = end         # (advisory: an error shows at the fsync)
        except OSError as exc:
            self.j.release(self.ns, len(data))
            raise Unavailable(f"this worker's journal ({self.j.dir}) cannot take the "
                              f"file: {exc.strerror or exc}") from None
        except BaseException:
            self.j.release(self.ns, len(data))
            raise
        self.size += len(data)
        view, bs = memoryview(data), self.j.block_size
        while len(view):
            take = min(len(view), bs - self._in_block)
            self._hash.update(view[:take])
            self._in_block += take
            view = view[take:]
            if self._in_block == bs:
                self.sums.append(self._hash.intdigest())
                self._hash, self._in_block = xxhash.xxh3_64(), 0

    def commit(self, **fields) -> Entry:
        """Durable from here: the data, then its meta, each fsync'd before the rename."""
        if self._in_block or not self.sums:
            self.sums.append(self._hash.intdigest())
        entry = Entry(id=self.id, size=self.size, block_size=self.j.block_size,
                      sums=tuple(self.sums), **fields)
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            tmp = self.j._path(self.id, _TMP)
            with open(tmp, "wb") as f:
                f.write(msgpack.packb(entry.to_record()))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.j._path(self.id, _META))
            fd = os.open(self.j.dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            self.abort()
            raise
        return entry

    def abort(self) -> None:
        """Nothing of it is kept (once: a failed commit aborts, and so may its caller)."""
        if self.gone:
            return
        self.gone = True
        try:
            self.file.close()
        except OSError:
            pass
        self.j.remove(self.id, self.ns, self.size)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
