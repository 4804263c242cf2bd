"""The master's metadata: mounts, cached listings, file entries and metadata epochs.

All reading and writing of the master's listing cache happens here (as fsspec's
CachingFileSystem leaves cache metadata to CacheMetadata). A directory is listed from
the under store when its cached listing is absent, expired (the dataset's sync policy)
or refreshed; a file refreshed on its own is asked for with one HEAD and replaces its
entry in its parent's listing, so `info`, `ls` and a fresh client all see it. When a
listing is found changed, the dataset's metadata epoch moves (core.py); every `ls`,
`info` and `epoch` reply carries it and clients drop their cached listings.
Never: hold the master lock while the under store is asked.
"""
from __future__ import annotations

import threading
import time

from .. import blocks, names
from ..errors import InvalidRequest, NotFound
from ..understore import Mount, times
from ..understore.versions import weak_scope
from .core import MasterCore
from .listing import DIR, FILE, DirListing, info_entry, ls_page
from ..dataset import Dataset, MountSpec

PAGE = 2000          # entries per ls reply: a page of ~200-byte entries stays under max_frame


class Listings:
    def __init__(self, core: MasterCore, lock: threading.RLock, default_sync: float,
                 max_dir_entries: int = 1_000_000, keep: float = 5.0) -> None:
        """`default_sync`: seconds a listing stays fresh when its dataset does not say;
        `keep`: seconds even the "always" policy keeps one (long enough to page it)."""
        self.core, self._lock, self.default_sync = core, lock, default_sync
        self.max_dir_entries, self.keep = max_dir_entries, keep
        self._mounts: dict[tuple, Mount] = {}
        self.overlay = None         # pending.Pending: kept files, listed above the store's

    # -- mounts ----------------------------------------------------------------------------
    def mount(self, ds: Dataset, spec: MountSpec) -> Mount:
        key = (ds.namespace, ds.name, ds.uid, spec.point, spec.url,
               repr(sorted(spec.options.items())))
        with self._lock:
            m = self._mounts.get(key)
            if m is None:
                m = self._mounts[key] = Mount(spec.url, spec.options, self.max_dir_entries)
        return m

    def mount_count(self) -> int:
        return len(self._mounts)

    def forget(self, ns: str, name: str) -> None:
        """A removed dataset: its mounts go (the core drops its listings)."""
        with self._lock:
            for key in [k for k in self._mounts if k[:2] == (ns, name)]:
                del self._mounts[key]

    def url_of(self, ds: Dataset, path: str):
        """child name -> the under-store URL of `path/child` (for file ids)."""
        spec, rel = ds.resolve(path)
        mount = self.mount(ds, spec)
        return lambda child: mount.url_of(f"{rel}/{child}" if rel else child)

    def fid(self, ds: Dataset, path: str, version: str) -> str:
        spec, rel = ds.resolve(path)
        return blocks.file_id(self.mount(ds, spec).url_of(rel), version, ds.namespace)

    def weak_scope(self, ds: Dataset) -> str:
        """What a weak version (no validator) is bound to: this dataset incarnation and
        this run of the master."""
        return weak_scope(ds.uid or ds.name, self.core.incarnation)

    def epoch(self, ds: Dataset) -> str:
        with self._lock:
            return self.core.epoch(ds.namespace, ds.name)

    # -- listings ----------------------------------------------------------------------------
    def _expiry(self, ds: Dataset, now: float) -> float:
        sync = ds.sync_interval if ds.sync_interval is not None else self.default_sync
        return float("inf") if sync < 0 else now + max(sync, self.keep)

    def _row(self, mount: Mount, ds: Dataset, e: dict) -> tuple:
        if e.get("type") == "directory":
            return (DIR, 0, "", None, None)
        return (FILE, int(e.get("size") or 0), mount.version_of(e, self.weak_scope(ds)),
                *times(e))

    def listing(self, ds: Dataset, path: str, refresh: bool = False) -> DirListing | dict:
        """The listing of a directory, or the entry of a file (a dict), from the cache
        unless absent, expired or `refresh`. A directory found gone is forgotten (and
        the dataset's epoch moves)."""
        now = time.monotonic()
        if not refresh:
            with self._lock:
                hit = self.core.listing(ds.namespace, ds.name, path, now)
            if hit is not None:
                return hit
        try:
            spec, rel = ds.resolve(path)
        except NotFound:
            spec = rel = None
        rows, found = [], False
        if spec is not None:
            mount = self.mount(ds, spec)
            try:
                raw = mount.ls(rel)
                found = True
            except NotFound:
                raw = []
            if len(raw) == 1 and raw[0].get("type") != "directory" and rel and \
                    mount.rel_of(raw[0]["name"]) == rel:
                kept = self.overlay.kept(ds, path) if self.overlay else None
                return self._file(ds, path, kept.row() if kept else
                                  self._row(mount, ds, raw[0]), now, refresh)
            for e in raw:
                if mount.protocol == "file" and names.is_being_written(e["name"]):
                    continue                      # a file being written (worker/upload.py)
                rows.append((mount.rel_of(e["name"]).rsplit("/", 1)[-1],
                             *self._row(mount, ds, e)))
        for child in ds.child_mounts(path):
            rows.append((child, DIR, 0, "", None, None))
            found = True
        if self.overlay is not None and self.overlay.merge(ds, path, rows):
            found = True                              # kept files (not in the store yet)
        if not found and not ds.is_virtual_dir(path) and (rel or ds.read_only):
            # (the root of a mount that takes writes lists empty until a file is in it)
            self._gone(ds, path, now)
            raise NotFound(f"{ds.name}/{path}: no such file or directory")
        listing = DirListing(rows)
        with self._lock:
            before = self.core.listing(ds.namespace, ds.name, path, None)
            if self.core.store_listing(ds.namespace, ds.name, path, listing,
                                       self._expiry(ds, now), started=now) and before:
                for gone in _subdirs(before) - _subdirs(listing):   # and all below them
                    self.core.forget_listing(ds.namespace, ds.name,
                                             f"{path}/{gone}" if path else gone, now)
        return listing

    def _gone(self, ds: Dataset, path: str, started: float) -> None:
        """A directory found gone: its listings (and those below) are forgotten, and its
        entry leaves its parent's listing (some stores list a prefix that holds only
        delete markers as a directory: once found empty, it is shown no more)."""
        parent, _, child = path.rpartition("/")
        with self._lock:
            self.core.forget_listing(ds.namespace, ds.name, path, started)
            held = self.core.listing(ds.namespace, ds.name, parent, None) if path else None
            if held is not None and held.find(child) is not None:
                self.core.store_listing(ds.namespace, ds.name, parent,
                                        held.with_entry(child, None), None, started)

    def _file(self, ds: Dataset, path: str, row: tuple | None, started: float,
              refresh: bool = True) -> dict:
        """A file looked at on its own, asked of the store at `started` (`row`: (FILE,
        size, version, mtime, created), or None when it is gone): its entry replaces the
        one in its parent's cached listing, and the entry is returned (NotFound when
        gone). When a refresh finds the parent's listing not held here, clients may still
        hold one with the old entry: the dataset's epoch moves."""
        parent, _, child = path.rpartition("/")
        with self._lock:
            held = self.core.listing(ds.namespace, ds.name, parent, None)
            if held is None and refresh:
                self.core.refreshed(ds.namespace, ds.name, parent, started)
            if held is not None and old_differs(held, child, row):
                self.core.store_listing(ds.namespace, ds.name, parent,
                                        held.with_entry(child, row), None, started)
        if row is None:
            raise NotFound(f"{ds.name}/{path}: no such file or directory")
        one = DirListing([(child, *row)])
        return info_entry(one, _prefix(ds, parent), self.url_of(ds, parent), child,
                          ds.namespace)

    def put_file(self, ds: Dataset, path: str, row: tuple) -> dict:
        """A file's row put in its parent's held listing (a kept file: not asked of the
        store); its entry."""
        return self._file(ds, path, row, time.monotonic())

    def held_entry(self, ds: Dataset, path: str) -> dict | None:
        """The entry of `path` in its parent's listing as held here, expired or not
        (None: not held, or not in it); never asks the store."""
        parent, _, child = path.rpartition("/")
        with self._lock:
            held = self.core.listing(ds.namespace, ds.name, parent, None)
        if held is None:
            return None
        return info_entry(held, _prefix(ds, parent), self.url_of(ds, parent), child,
                          ds.namespace)

    def entry(self, ds: Dataset, path: str, refresh: bool = False) -> dict:
        """`info` of a path. A refresh (or the "always" policy) asks the store about this
        one file, not its whole directory."""
        if path == "" or (ds.is_virtual_dir(path) and path not in {m.point for m in ds.mounts}):
            return _dir_entry(ds, path)
        parent, _, child = path.rpartition("/")
        kept = self.overlay.kept(ds, path) if self.overlay is not None else None
        if kept is not None:          # a kept file: above the store (which may be down)
            return self._file(ds, path, kept.row(), time.monotonic())
        refresh = refresh or ds.sync_interval == 0
        if refresh:
            spec, rel = ds.resolve(path)
            if rel:
                mount = self.mount(ds, spec)
                started = time.monotonic()
                try:
                    info = mount.info(rel)
                except NotFound:
                    return self._file(ds, path, None, started)
                if info.get("type") != "directory":
                    return self._file(ds, path, self._row(mount, ds, info), started)
                return _dir_entry(ds, path)
        listing = self.listing(ds, parent)
        entry = None if isinstance(listing, dict) else info_entry(
            listing, _prefix(ds, parent), self.url_of(ds, parent), child, ds.namespace)
        if entry is None:
            raise NotFound(f"{ds.name}/{path}: no such file or directory")
        return entry

    def page(self, ds: Dataset, path: str, after, limit, refresh: bool = False) -> dict:
        """One page of a directory: {"entries", "next"}; a file lists as itself."""
        if not (after is None or isinstance(after, str)) or not isinstance(limit, int) \
                or isinstance(limit, bool) or not 1 <= limit <= PAGE:
            raise InvalidRequest(f"ls: 'after' must be a string, 'limit' 1..{PAGE}")
        fresh = refresh or ds.sync_interval == 0      # "always": re-list
        listing = self.listing(ds, path, refresh=fresh and after is None)
        if isinstance(listing, dict):
            return {"entries": [listing], "next": None}
        entries, nxt = ls_page(listing, _prefix(ds, path), self.url_of(ds, path), after,
                               limit, ds.namespace)
        return {"entries": entries, "next": nxt}

    def refresh_tree(self, ds: Dataset, path: str) -> dict:
        """List everything under `path` again (`load --metadata-only`); a file is asked
        for on its own. Cached listings below `path` of directories that are gone are
        forgotten. Returns the directories and files seen."""
        started = time.monotonic()
        try:
            top = self.listing(ds, path, refresh=True)
        except NotFound:
            top = None
        if isinstance(top, dict) or top is None:
            self.entry(ds, path, refresh=True)        # NotFound when it is not there
            return {"directories": 0, "files": 1}
        todo, dirs, files, seen = [(path, top)], 0, 0, {path}
        while todo:
            d, listing = todo.pop()
            dirs += 1
            for i in range(len(listing)):
                name, kind, _, _ = listing.entry(i)
                if kind == DIR:
                    child = f"{d}/{name}" if d else name
                    try:
                        todo.append((child, self.listing(ds, child, refresh=True)))
                        seen.add(child)
                    except NotFound:          # removed while we walked
                        continue
                else:
                    files += 1
        with self._lock:
            for gone in self.core.held_below(ds.namespace, ds.name, path) - seen:
                self.core.forget_listing(ds.namespace, ds.name, gone, started)
        return {"directories": dirs, "files": files}


def _subdirs(listing: DirListing) -> set[str]:
    return {listing.names[i] for i in range(len(listing)) if listing.kinds[i] == DIR}


def old_differs(held: DirListing, child: str, row: tuple | None) -> bool:
    """Does `row` (or None: gone) say something else than `held` says of `child`?"""
    i = held.find(child)
    old = None if i is None else (*held.entry(i)[1:], *held.times(i))
    return old != row and not (i is None and row is None)


def _prefix(ds: Dataset, path: str) -> str:
    return f"{ds.name}/{path}/" if path else f"{ds.name}/"


def _dir_entry(ds: Dataset, fpath: str) -> dict:
    return {"name": f"{ds.name}/{fpath}".rstrip("/"), "size": 0, "type": "directory"}
