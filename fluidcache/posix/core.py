"""The mount's pure parts: the errno of each failure, stat fields of listed entries,
and what the kernel may hold of each file (tested alone, no FUSE).

The kernel keeps a file's pages per inode, across opens and handles; it cuts reads at
the size it was last told. Rules kept here:
- an open may keep the pages (keep_cache) only when it opens the version whose pages
  the kernel may hold; otherwise they are dropped at that open;
- while a handle of one version reads through the page cache, an open of another
  version reads around it (direct_io): two versions never share the pages;
- a file opened for writing (writes go around the page cache) or one whose commit
  failed leaves the kernel's view unknown: the next open drops pages and attributes;
- an open of a version of another size than the kernel was told first says the
  attributes are stale.
Never: do I/O.
"""
from __future__ import annotations

import errno
import stat
import threading
from collections import Counter

# errnos passed to the caller as they are; anything else is EIO (with a log line)
_KEPT = {errno.ENOENT, errno.EACCES, errno.EEXIST, errno.EISDIR, errno.ENOTDIR,
         errno.ENOTSUP, errno.ENOTEMPTY, errno.EROFS, errno.EINVAL, errno.ESTALE,
         errno.EBUSY, errno.ENOSPC, errno.ENAMETOOLONG, errno.EDQUOT, errno.ETXTBSY}
_BY_TYPE = ((FileNotFoundError, errno.ENOENT), (PermissionError, errno.EACCES),
            (FileExistsError, errno.EEXIST), (IsADirectoryError, errno.EISDIR),
            (NotADirectoryError, errno.ENOTDIR), (UnicodeError, errno.EINVAL))
UNKNOWN = -1                # a size the kernel may hold that we do not know


def errno_of(exc: BaseException) -> int:
    """The errno the kernel answers for `exc`: its own where it is one a caller can act
    on (ENOENT, EACCES, EROFS, ENOSPC, ...), else EIO."""
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
    """What the kernel may hold of each file (see the module's rules). Bounded: when
    it forgets, every path counts as unknown, which only costs the kernel's caches."""

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._cached: dict[str, str | None] = {}   # path -> fid whose pages it may hold
        self._told: dict[str, int] = {}            # path -> size getattr told it
        self._readers: dict[str, Counter] = {}     # path -> fids read through the cache
        self._held: dict[str, tuple[str, int]] = {}   # path -> (fid, size) they read
        self._forgot = False
        self._lock = threading.Lock()

    def _room(self) -> None:
        if len(self._cached) >= self.limit or len(self._told) >= self.limit:
            self._cached.clear()
            self._told.clear()
            self._forgot = True

    def opened(self, path: str, fid: str, size: int) -> tuple[bool, bool, bool]:
        """An open for reading of version `fid` (`size` bytes): (keep_cache, direct_io,
        attributes stale). A direct open must be `closed` with direct=True."""
        with self._lock:
            self._room()
            others = self._readers.get(path)
            if others and any(f != fid for f in others):
                # another version reads through the pages: this one reads around them
                # (direct reads are not cut at the kernel's size either)
                return False, True, False
            was = self._told.get(path, UNKNOWN if self._forgot else size)
            stale = was != size
            self._told[path] = size
            keep = path in self._cached and self._cached[path] == fid
            self._cached[path] = fid
            self._readers.setdefault(path, Counter())[fid] += 1
            self._held[path] = (fid, size)
            return keep, False, stale

    def held(self, path: str) -> tuple[str, int] | None:
        """(fid, size) of the version handles read through the pages now, if any: a
        stat must not tell the kernel another size meanwhile (it would cut them)."""
        with self._lock:
            return self._held.get(path) if self._readers.get(path) else None

    def closed(self, path: str, fid: str, direct: bool) -> None:
        if direct:
            return
        with self._lock:
            readers = self._readers.get(path)
            if readers is not None:
                readers[fid] -= 1
                if readers[fid] <= 0:
                    del readers[fid]
                if not readers:
                    del self._readers[path]
                    self._held.pop(path, None)

    def told(self, path: str, size: int) -> None:
        with self._lock:
            self._room()
            self._told[path] = size

    def written(self, path: str) -> None:
        """`path` is opened for writing, committed or failed: what the kernel holds of
        it (pages, size) is unknown until an open drops it."""
        with self._lock:
            self._cached[path] = None
            self._told[path] = UNKNOWN


__all__ = ["PageCache", "errno_of", "stat_of"]
