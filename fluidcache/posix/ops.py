"""The mount's file operations: what the kernel asks (libfuse 3, through mfusepy),
answered by the same `fluid://` filesystem fsspec users have (short-circuit reads,
remote reads, failover, tokens, the same metrics).

Owns: kernel paths to `fluid://` paths under the mount's root, the open handles (a
read handle holds a FluidFile and reads at the kernel's offsets; a write handle holds
a FluidWriter and takes sequential writes, committed at every close(2) of a
descriptor: a write after that, through a dup'd one, writes the file again), when
the kernel may keep a file's pages (keep_cache: the version opened is the one it last
cached), and the errno of every failure (with a log line saying why for EIO).
Never: read bytes or names by itself (the fs does), or let an exception reach libfuse
without an errno. Stat fields and errno choice are pure functions (tested alone).
"""
from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass, field

import mfusepy

from ..errors import FluidError

log = logging.getLogger("fluidcache.mount")

BLOCK = 4096
MADE_LIMIT = 10_000         # empty directories a mount remembers making
MAX_READ = 1 << 20          # the largest read the kernel sends (and its readahead)
# errnos passed to the caller as they are; anything else is EIO with a log line
_KEPT = {errno.ENOENT, errno.EACCES, errno.EEXIST, errno.EISDIR, errno.ENOTDIR,
         errno.ENOTSUP, errno.ENOTEMPTY, errno.EROFS, errno.EINVAL, errno.ESTALE,
         errno.EBUSY}
_BY_TYPE = ((FileNotFoundError, errno.ENOENT), (PermissionError, errno.EACCES),
            (FileExistsError, errno.EEXIST), (IsADirectoryError, errno.EISDIR),
            (NotADirectoryError, errno.ENOTDIR))


def errno_of(exc: BaseException) -> int:
    """The errno the kernel answers for `exc`: its own where it is one a caller can act
    on (ENOENT, EACCES, EROFS, ...), else EIO."""
    code = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and code in _KEPT:
        return code
    for kind, c in _BY_TYPE:
        if isinstance(exc, kind):
            return c
    return errno.EIO


def stat_of(entry: dict, writable: bool, uid: int, gid: int, default_time: float = 0.0
            ) -> dict:
    """stat(2) fields of a listed entry: files 0444 (0644 when the dataset takes
    writes), directories 0555 (0755); times (ns) from the store's mtime where it has
    one, else `default_time` (the mount's start: object stores keep no directories)."""
    mtime = int(float(entry.get("mtime") or default_time) * 1e9)
    if entry.get("type") == "directory":
        mode, nlink, size = stat.S_IFDIR | (0o755 if writable else 0o555), 2, 0
    else:
        mode, nlink, size = stat.S_IFREG | (0o644 if writable else 0o444), 1, \
            int(entry.get("size") or 0)
    return {"st_mode": mode, "st_nlink": nlink, "st_size": size, "st_uid": uid,
            "st_gid": gid, "st_blksize": 1 << 20, "st_blocks": (size + 511) // 512,
            "st_mtime": mtime, "st_ctime": mtime, "st_atime": mtime}


class PageCache:
    """What the kernel may hold of each file: the pages of the version opened last (an
    open keeps them, keep_cache, only when it opens that version again) and the size
    getattr last told it (an open of a version of another size first tells the kernel
    its attributes are stale: it would cut reads at the old size). Bounded: a path it
    forgot counts as unknown, which only costs the kernel's caches."""

    def __init__(self, limit: int = 200_000) -> None:
        self.limit, self._seen, self._told = limit, {}, {}
        self._forgot = False            # some sizes told were forgotten: unknown = stale
        self._lock = threading.Lock()

    def keep(self, path: str, fid: str) -> bool:
        with self._lock:
            same = self._seen.get(path) == fid
            if not same:
                if len(self._seen) >= self.limit:
                    self._seen.clear()
                self._seen[path] = fid
            return same

    def told(self, path: str, size: int) -> None:
        with self._lock:
            if len(self._told) >= self.limit:
                self._told.clear()
                self._forgot = True
            self._told[path] = size

    def stale(self, path: str, size: int) -> bool:
        """May the kernel hold another size for `path` than `size`?"""
        with self._lock:
            was = self._told.get(path)
            return was != size if was is not None else self._forgot


@dataclass
class Handle:
    path: str                       # the fluid:// path (stripped)
    file: object = None             # FluidFile (reads) or FluidWriter (writes)
    writing: bool = False
    written: int = 0
    error: int = 0                  # a failed commit's errno, said again at release
    lock: threading.Lock = field(default_factory=threading.Lock)


def _kernel_forgets(path: str) -> None:
    """Tell the kernel what it holds of `path` (attributes, pages) is stale; from inside
    a request (libfuse's fuse_invalidate_path; not for getattr, read or write of the
    same file, which libfuse says could deadlock)."""
    lib = mfusepy._libfuse
    ctx = lib.fuse_get_context()
    if ctx and ctx.contents.fuse:
        lib.fuse_invalidate_path(ctypes.c_void_p(ctx.contents.fuse),
                                 path.encode("utf-8", "surrogateescape"))


def answers(fn):
    """Every failure becomes a FuseOSError with its errno; EIO says why in the log."""
    @functools.wraps(fn)
    def run(self, path, *args):
        try:
            return fn(self, path, *args)
        except mfusepy.FuseOSError:
            raise
        except Exception as exc:  # noqa: BLE001 - each answered with an errno
            code = errno_of(exc)
            if code in (errno.EIO, errno.ESTALE):
                log.warning("%s %s: %s: %s", fn.__name__, path, type(exc).__name__, exc)
            raise mfusepy.FuseOSError(code) from None
    return run


class FluidOps(mfusepy.Operations):
    """The operations of one mount of `fluid://ROOT` (a dataset or a directory in one)."""

    use_ns = True

    def __init__(self, fs, root: str, writable: bool, timeout: float) -> None:
        self.fs, self.root, self.writable, self.timeout = fs, root.strip("/"), writable, \
            timeout
        if not writable:
            # nothing to commit at close(2): the kernel then never asks (one round trip
            # less per file opened)
            self.flush = None
        self.uid, self.gid, self.started = os.getuid(), os.getgid(), time.time()
        self.pages = PageCache()
        self.handles: dict[int, Handle] = {}
        # directories made here that the store does not keep while empty (object
        # stores): shown by this mount until a file in them lists them (bounded)
        self.made: set[str] = set()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # -- paths and handles ------------------------------------------------------------
    def full(self, path: str) -> str:
        """The fluid:// path (stripped) of a kernel path below the mount."""
        rest = path.strip("/")
        if any(p in ("", ".", "..") for p in rest.split("/")) and rest:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return f"{self.root}/{rest}" if rest else self.root

    def _put(self, h: Handle) -> int:
        with self._lock:
            fh = next(self._ids)
            self.handles[fh] = h
            return fh

    def _writing(self, full: str) -> Handle | None:
        with self._lock:
            return next((h for h in self.handles.values() if h.writing and h.path == full
                         and not h.file.closed), None)

    def _must_write(self) -> None:
        if not self.writable:
            raise mfusepy.FuseOSError(errno.EROFS)

    # -- the mount ----------------------------------------------------------------------
    def init_with_config(self, conn, config) -> None:
        """Entry and attribute timeouts from the dataset's sync policy; large reads."""
        if config is not None:
            config.entry_timeout = config.attr_timeout = self.timeout
            config.negative_timeout = min(self.timeout, 1.0)
        if conn is not None:
            # as the mount's max_read option says (libfuse 3 refuses to differ)
            conn.max_read = conn.max_readahead = MAX_READ

    @answers
    def statfs(self, path):
        return {"f_bsize": 1 << 20, "f_frsize": BLOCK, "f_namemax": 1024}

    # -- names ----------------------------------------------------------------------------
    @answers
    def getattr(self, path, fh=None):
        full = self.full(path)
        h = self._writing(full)
        if h is not None:                    # written now, listed once it is closed
            return stat_of({"type": "file", "size": h.written, "mtime": time.time()},
                           True, self.uid, self.gid)
        held = self.handles.get(getattr(fh, "fh", -1))
        if held is not None and not held.writing:
            entry = held.file.details                # the open file's version
        else:
            try:
                entry = self.fs.info(full)
            except FileNotFoundError:
                if full not in self.made:
                    raise
                entry = {"type": "directory", "size": 0}
        if entry.get("type") == "file":
            self.pages.told(full, int(entry.get("size") or 0))
        return stat_of(entry, self.writable, self.uid, self.gid, self.started)

    @answers
    def readdir(self, path, fh):
        full = self.full(path)
        out, seen = [".", ".."], set()
        try:
            entries = self.fs.ls(full, detail=True)
        except FileNotFoundError:
            if full not in self.made:
                raise
            entries = []
        for e in entries:
            name = e["name"].rstrip("/").rsplit("/", 1)[-1]
            if name and e["name"].strip("/") != full:
                mode = stat.S_IFDIR if e["type"] == "directory" else stat.S_IFREG
                out.append((name, {"st_mode": mode}, 0))
                seen.add(name)
        for d in list(self.made):
            parent, _, name = d.rpartition("/")
            if parent == full and name not in seen:
                out.append((name, {"st_mode": stat.S_IFDIR}, 0))
        return out

    @answers
    def mkdir(self, path, mode):
        self._must_write()
        full = self.full(path)
        self.fs.mkdir(full)
        if len(self.made) < MADE_LIMIT:
            self.made.add(full)

    @answers
    def rmdir(self, path):
        self._must_write()
        full = self.full(path)
        try:
            if self.fs.ls(full, detail=False, refresh=True):
                raise mfusepy.FuseOSError(errno.ENOTEMPTY)
        except FileNotFoundError:
            if full not in self.made:
                raise
            self.made.discard(full)          # made here, never written in: nothing stored
            return
        self.made.discard(full)
        self.fs.rmdir(full)

    @answers
    def unlink(self, path):
        self._must_write()
        self.fs.rm_file(self.full(path))

    @answers
    def rename(self, old, new):
        self._must_write()
        src, dst = self.full(old), self.full(new)
        if self.fs.isdir(src):
            raise mfusepy.FuseOSError(errno.ENOTSUP)     # an object store has no dirs
        self.fs.mv(src, dst)

    @answers
    def truncate(self, path, length, fh=None):
        self._must_write()
        full = self.full(path)
        h = self._writing(full)
        if h is not None and length == h.written:
            return 0                              # O_TRUNC on a file opened for writing
        if h is None and length == 0:
            self.fs.pipe_file(full, b"")           # `truncate -s 0`, `: > file`
            return 0
        raise mfusepy.FuseOSError(errno.ENOTSUP)  # files are written whole, in order

    @answers
    def utimens(self, path, times=None):
        return 0                                  # the store keeps its own times

    @answers
    def chmod(self, path, mode):
        return 0 if self.writable else self._must_write()

    @answers
    def chown(self, path, uid, gid):
        return 0 if self.writable else self._must_write()

    # -- bytes ----------------------------------------------------------------------------
    @answers
    def create(self, path, mode, fi):
        self._must_write()
        full = self.full(path)
        fi.fh = self._put(Handle(full, self.fs.open(full, "wb"), writing=True))
        return 0

    @answers
    def open(self, path, fi):
        full = self.full(path)
        if fi.flags & os.O_ACCMODE != os.O_RDONLY:
            self._must_write()
            if not fi.flags & (os.O_TRUNC | os.O_APPEND):
                raise mfusepy.FuseOSError(errno.ENOTSUP)     # no changing files in place
            h = Handle(full, self.fs.open(full, "wb"), writing=True)
            if not fi.flags & os.O_TRUNC:
                self._carry(h, full)               # appending: the file again, then more
            fi.fh = self._put(h)
            return 0
        f = self.fs._open(full, "rb")
        if self.pages.stale(full, f.size):
            _kernel_forgets(path)        # it would cut reads at the size it was told
            self.pages.told(full, f.size)
        fi.keep_cache = 1 if self.pages.keep(full, f.details.get("fid", "")) else 0
        fi.fh = self._put(Handle(full, f))
        return 0

    @answers
    def read(self, path, size, offset, fi):
        h = self.handles.get(fi.fh)
        if h is None or h.writing:
            raise mfusepy.FuseOSError(errno.EBADF)
        return h.file.pread(offset, size)

    @answers
    def write(self, path, data, offset, fi):
        h = self.handles.get(fi.fh)
        if h is None or not h.writing:
            raise mfusepy.FuseOSError(errno.EBADF)
        with h.lock:
            if offset != h.written:
                log.warning("write %s: at %d after %d bytes: files are written in order",
                            h.path, offset, h.written)
                raise mfusepy.FuseOSError(errno.ENOTSUP)
            if h.file.closed:       # written after a close of a dup'd descriptor
                h.file = self.fs.open(h.path, "wb")
                self._carry(h, h.path, h.written)
            h.file.write(data)
            h.written += len(data)
        return len(data)

    def _carry(self, h: Handle, path: str, size: int | None = None) -> None:
        """Start h's new writer with what `path` holds now (its first `size` bytes):
        every close commits the file as written so far, and writing on continues it."""
        h.written = 0
        try:
            with self.fs.open(path, "rb") as f:
                end = f.size if size is None else size
                while h.written < end:
                    chunk = f.pread(h.written, min(MAX_READ * 8, end - h.written))
                    if not chunk:
                        break
                    h.file.write(chunk)
                    h.written += len(chunk)
        except BaseException:
            h.file.discard()
            raise

    @answers
    def flush(self, path, fi):
        """A writer's close(2): commit here, so the caller hears if it failed and the
        next open anywhere reads it whole (a later write through a dup'd descriptor
        writes the file again, continued: see write)."""
        h = self.handles.get(fi.fh)
        if h is not None and h.writing:
            self._commit(h)
        return 0

    @answers
    def release(self, path, fi):
        with self._lock:
            h = self.handles.pop(fi.fh, None)
        if h is None:
            return 0
        if h.writing:
            self._commit(h)
        else:
            h.file.close()
        return 0

    def _commit(self, h: Handle) -> None:
        with h.lock:
            if h.error:
                raise mfusepy.FuseOSError(h.error)
            if h.file.closed:
                return
            try:
                h.file.close()
            except (OSError, FluidError) as exc:
                h.error = errno_of(exc)
                log.warning("close %s: %s: %s", h.path, type(exc).__name__, exc)
                raise mfusepy.FuseOSError(h.error) from None


__all__ = ["FluidOps", "PageCache", "errno_of", "stat_of"]
