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
from dataclasses import dataclass

import mfusepy

from ..errors import StaleVersion
from .core import PageCache, errno_of, stat_of
from .writes import WriteHandle, tgid

log = logging.getLogger("fluidcache.mount")

BLOCK = 4096
NAME_MAX = 255              # the longest name in a path this mount makes
MADE_LIMIT = 10_000         # empty directories a mount remembers making
MAX_READ = 1 << 20          # the largest read the kernel sends (and its readahead)
ROOMY = 1 << 50             # what statfs says is free: a store has no fixed size


@dataclass
class Handle:
    """A file open for reading: one version (its FluidFile), around the page cache
    or not."""
    path: str
    file: object
    fid: str
    direct: bool


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
        self.handles: dict[int, Handle | WriteHandle] = {}
        self.writers: dict[str, list[WriteHandle]] = {}   # path -> its open writers
        # directories made here that the store does not keep while empty (object
        # stores): shown by this mount until a file in them lists them (bounded)
        self.made: set[str] = set()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # -- paths and handles ------------------------------------------------------------
    def full(self, path: str) -> str:
        """The fluid:// path (stripped) of a kernel path below the mount."""
        rest = path.strip("/")
        if rest:
            parts = rest.split("/")
            if any(p in ("", ".", "..") for p in parts):
                raise mfusepy.FuseOSError(errno.ENOENT)
            try:
                rest.encode("utf-8")
            except UnicodeError:         # no store names a file so: nothing is there
                raise mfusepy.FuseOSError(errno.ENOENT) from None
        return f"{self.root}/{rest}" if rest else self.root

    def _new_name(self, path: str) -> str:
        """full(path) for a name this mount makes: bounded, UTF-8."""
        try:
            path.strip("/").encode("utf-8")
        except UnicodeError:
            raise mfusepy.FuseOSError(errno.EINVAL) from None
        if any(len(p.encode()) > NAME_MAX for p in path.strip("/").split("/")):
            raise mfusepy.FuseOSError(errno.ENAMETOOLONG)
        return self.full(path)

    def _put(self, h) -> int:
        with self._lock:
            fh = next(self._ids)
            self.handles[fh] = h
            if isinstance(h, WriteHandle):
                self.writers.setdefault(h.path, []).append(h)
            return fh

    def _writing(self, full: str) -> WriteHandle | None:
        with self._lock:
            return next((w for w in self.writers.get(full, ()) if not w.error), None)

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
        blocks = ROOMY // BLOCK      # a store has no fixed size: say it is roomy, as
        return {"f_bsize": 1 << 20, "f_frsize": BLOCK, "f_blocks": blocks,  # s3fs does
                "f_bfree": blocks, "f_bavail": blocks, "f_files": 1 << 32,
                "f_ffree": 1 << 32, "f_favail": 1 << 32, "f_namemax": NAME_MAX}

    # -- names ----------------------------------------------------------------------------
    @answers
    def getattr(self, path, fh=None):
        full = self.full(path)
        w = self._writing(full)
        if w is not None:                    # written now, listed once it is committed
            return stat_of({"type": "file", "size": w.written, "mtime": time.time()},
                           True, self.uid, self.gid)
        held = self.handles.get(getattr(fh, "fh", -1))
        if isinstance(held, Handle):
            entry = held.file.details                # the open file's version
        else:
            try:
                entry = self.fs.info(full)
            except FileNotFoundError:
                if full not in self.made:
                    raise
                entry = {"type": "directory", "size": 0}
        if entry.get("type") == "file" and not getattr(held, "direct", False):
            reading = self.pages.held(full)
            if reading is not None and reading[0] != entry.get("fid"):
                # open readers read another version through the pages: its size stays
                entry = dict(entry, size=reading[1])
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
        full = self._new_name(path)
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
        full = self.full(path)
        self.fs.rm_file(full)
        self.pages.written(full)

    @answers
    def rename(self, old, new):
        self._must_write()
        src, dst = self.full(old), self._new_name(new)
        if self.fs.isdir(src):
            raise mfusepy.FuseOSError(errno.ENOTSUP)     # an object store has no dirs
        self.fs.mv(src, dst)
        self.pages.written(src)
        self.pages.written(dst)

    @answers
    def truncate(self, path, length, fh=None):
        self._must_write()
        full = self.full(path)
        w = self._writing(full)
        if w is not None and length == w.written:
            return 0                              # O_TRUNC on a file opened for writing
        if w is None and length == 0:
            self._busy(full)
            self.fs.pipe_file(full, b"")           # `truncate -s 0`, `: > file`
            self.pages.written(full)
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
    def _busy(self, full: str) -> None:
        """Refuse to replace a file this mount's readers read through the page cache:
        the kernel would set its one size of the file to 0 and cut their reads."""
        if self.pages.held(full) is not None:
            log.warning("%s is open for reading here: not replaced while it is", full)
            raise mfusepy.FuseOSError(errno.ETXTBSY)

    def _open_write(self, path: str, fi, exclusive: bool) -> int:
        self._must_write()
        full = self._new_name(path)
        self._busy(full)
        w = WriteHandle(self.fs, full, exclusive, tgid(mfusepy.fuse_get_context()[2]))
        self.pages.written(full)
        fi.direct_io = 1                # its bytes never sit in the kernel's pages
        fi.fh = self._put(w)
        return 0

    @answers
    def create(self, path, mode, fi):
        # without O_TRUNC (">>", a bare O_CREAT) a file that is there is never replaced:
        # the kernel may not know of it yet, so the store is asked at commit (EEXIST)
        exclusive = bool(fi.flags & os.O_EXCL) or not fi.flags & os.O_TRUNC
        if exclusive and not fi.flags & os.O_EXCL and self.fs.exists(self.full(path)):
            raise mfusepy.FuseOSError(errno.ENOTSUP)   # appending, changing in place
        return self._open_write(path, fi, exclusive)

    @answers
    def open(self, path, fi):
        if fi.flags & os.O_ACCMODE != os.O_RDONLY:
            self._must_write()
            if fi.flags & os.O_APPEND or not fi.flags & os.O_TRUNC:
                # an object is written whole: no appending, no changing it in place
                raise mfusepy.FuseOSError(errno.ENOTSUP)
            return self._open_write(path, fi, False)
        full = self.full(path)
        f = self.fs._open(full, "rb")
        fid = f.details.get("fid", "")
        keep, direct, stale = self.pages.opened(full, fid, f.size)
        if stale:
            _kernel_forgets(path)        # it would cut reads at the size it was told
        fi.keep_cache, fi.direct_io = int(keep), int(direct)
        fi.fh = self._put(Handle(full, f, fid, direct))
        return 0

    @answers
    def read(self, path, size, offset, fi):
        h = self.handles.get(fi.fh)
        if not isinstance(h, Handle):
            raise mfusepy.FuseOSError(errno.EBADF)
        try:
            return h.file.pread(offset, size)
        except StaleVersion:
            # gone from the store since it was listed: have the master list it again,
            # so the next open reads what the store holds now
            try:
                self.fs.info(h.path, refresh=True)
            except OSError:
                pass
            raise

    @answers
    def write(self, path, data, offset, fi):
        w = self.handles.get(fi.fh)
        if not isinstance(w, WriteHandle):
            raise mfusepy.FuseOSError(errno.EBADF)
        return w.write(data, offset)

    @answers
    def flush(self, path, fi):
        """close(2) of a descriptor: the opener's commits (the caller hears if it
        failed, and every next open reads it whole); a child's close does not."""
        w = self.handles.get(fi.fh)
        if isinstance(w, WriteHandle) and \
                tgid(mfusepy.fuse_get_context()[2]) == w.opener:
            self._commit(w)
        return 0

    @answers
    def fsync(self, path, datasync, fi):
        w = self.handles.get(fi.fh)
        if isinstance(w, WriteHandle):
            self._commit(w)              # in the store once fsync returns
        return 0

    @answers
    def release(self, path, fi):
        with self._lock:
            h = self.handles.pop(fi.fh, None)
            if isinstance(h, WriteHandle):
                same = self.writers[h.path]
                same.remove(h)
                if not same:
                    del self.writers[h.path]
        if isinstance(h, WriteHandle):
            try:
                if not h.error:          # (a failure was said at its write or close)
                    self._commit(h)      # the last close, whoever made it
            finally:
                h.drop()
        elif h is not None:
            h.file.close()
            self.pages.closed(h.path, h.fid, h.direct)
        return 0

    def _commit(self, w: WriteHandle) -> None:
        try:
            w.commit()
        finally:
            self.pages.written(w.path)


class Mount(mfusepy.FUSE):
    """mfusepy's FUSE, with rename's flags seen: RENAME_EXCHANGE and RENAME_NOREPLACE
    are refused (EINVAL) rather than done as a plain rename."""

    def rename_fuse_3(self, old, new, flags):
        if flags:
            return -errno.EINVAL
        return super().rename_fuse_3(old, new, flags)


__all__ = ["FluidOps", "Handle", "Mount"]
