"""The master's side of writes: what changes names in a dataset, and what every client
must then see.

Ops (clients): `rm` (a page of files and directories, kept ones too), `copy` (one file
to another path of the same mount: the store copies it), `mkdir`, `sync` (waits for
async-through's uploads: pending.py). From workers (a Ray call): `wrote`, a file a
worker committed to the under store.
After any change the master looks at the changed names in the store (one HEAD per
file), puts what it found into its cached listings (a file's entry in its parent's
listing, each directory above it in its own parent's, a removed directory's listings
forgotten), moves the dataset's metadata epoch (every client drops its listings of the
dataset before it trusts them again) and frees the cached blocks of the version a path
held before (readers still holding the old entry miss, fetch, find the store changed
and list it again: no stale bytes stay cached).
Owns: checking these requests (the dataset takes writes, paths normalized, never a
mount's root), and the store calls that change names.
Never: hold the master lock while the store is asked, or carry file bytes (workers do).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

from .. import blocks, paging
from ..config import Config
from ..dataset import Dataset, normalize
from ..errors import InvalidRequest, IsADirectory, NotFound, NotSupported
from ..understore.mount import translate
from .catalog import arg_str, target
from .core import MasterCore
from .listing import DIR
from .listings import Listings

log = logging.getLogger(__name__)
RM_PAGE = paging.PAGE_ITEMS        # paths one rm request names, at most
SYNC_WAIT = 10.0                   # seconds one sync request waits, at most


class Writes:
    def __init__(self, core: MasterCore, lock: threading.RLock, listings: Listings,
                 config: Config, free_keys: Callable[[list[str]], None]) -> None:
        """`free_keys(keys)`: drop these blocks on every worker, without waiting for
        their reports (dataops)."""
        self.core, self._lock, self.listings, self.config = core, lock, listings, config
        self._free_keys = free_keys
        self.pending = None        # pending.Pending (kept files), set by the master

    def _writable(self, ns: str, args: dict, key: str = "p") -> tuple[Dataset, str]:
        ds, _ = target(self.core, self._lock, ns, {"ds": args.get("ds")})
        ds.check_writable()
        return ds, normalize(arg_str(args, key, ""))

    def _mount(self, ds: Dataset, path: str):
        spec, rel = ds.resolve(path)
        if not rel:
            raise InvalidRequest(f"{ds.name}/{path}: the root of a mount cannot be written "
                                 "or removed (remove the dataset instead)")
        mount = self.listings.mount(ds, spec)
        return mount, rel, mount.under_path(rel)

    # -- from workers ---------------------------------------------------------------------
    def wrote(self, ns: str, name: str, path: str, uid: str) -> dict:
        """A worker committed a file at `path` of the dataset incarnation `uid`: list it
        (asked of the store: of two writers of one path, what the store holds now wins,
        whichever worker tells us last), show it, free its old blocks."""
        with self._lock:
            ds = self.core.dataset(ns, name)
        if ds.uid != uid:
            raise NotFound(f"dataset {name} was removed while a file was written to it")
        ds.check_writable()
        path = normalize(path)
        old = self._old_entry(ds, path)
        entry = self.listings.entry(ds, path, refresh=True)
        self._show_dirs(ds, path)
        self._changed(ds, [old] if old and old.get("fid") != entry.get("fid") else [])
        return entry

    def shown(self, ds: Dataset, path: str, old: list[dict]) -> None:
        """A file listed without asking the store (a kept one, pending.py): the
        directories above it show, every client drops its listings, `old` blocks go."""
        self._show_dirs(ds, path)
        self._changed(ds, old)

    def relist(self, ds: Dataset, path: str) -> None:
        """A kept file left: what the store holds at `path` (if anything) is listed."""
        try:
            self.listings.entry(ds, path, refresh=True)
        except NotFound:
            self._gone_file(ds, path)
        self._changed(ds, [])

    def remove_uploaded(self, ns: str, name: str, path: str) -> None:
        """A kept file removed while it was being uploaded: what the upload put in the
        store goes too."""
        with self._lock:
            ds = self.core.dataset(ns, name)
        mount, _, under = self._mount(ds, path)
        with translate(path):
            try:
                mount.fs.rm_file(under)
            except FileNotFoundError:
                pass
        self.relist(ds, path)

    # -- client ops -----------------------------------------------------------------------
    def op_rm(self, ns: str, args: dict) -> dict:
        """Remove a page of paths: files, and directories that are empty by then (files
        go first: the client sends them deepest first). An object store's directory is
        gone once its files are; one that still holds files is refused (IsADirectory).
        Every path is checked before anything is removed. Returns {"removed": n,
        "missing": [paths not there]}."""
        paths = args.get("paths")
        if not isinstance(paths, list) or not paths or len(paths) > RM_PAGE or \
                not all(isinstance(p, str) for p in paths):
            raise InvalidRequest(f"rm needs a list of 1-{RM_PAGE} paths")
        ds, _ = self._writable(ns, args, "ds")
        targets = []
        for p in paths:                                   # all checked, then removed
            path = normalize(p)
            targets.append((path, *self._mount(ds, path)))
        removed, old, missing, parents = 0, [], [], set()
        try:
            for path, mount, _, under in targets:
                entry = self._old_entry(ds, path)
                with translate(path):
                    try:
                        info = mount.fs.info(under)   # the store answers before any change
                    except FileNotFoundError:
                        info = None
                kept = self.pending.take(ds, path)    # not uploaded yet, or never
                if info is None and kept is None:
                    # its upload may have ended between the two questions: ask again
                    with translate(path):
                        try:
                            mount.fs.invalidate_cache(under)
                            info = mount.fs.info(under)
                        except FileNotFoundError:
                            info = None
                if info is None and kept is not None:
                    removed += 1
                    self._gone_file(ds, path)
                    parents.add(path.rpartition("/")[0])
                    continue
                if info is None:
                    missing.append(path)
                    self._forget_dir(ds, path)
                    continue
                if info.get("type") == "directory":
                    if mount.protocol != "file":
                        raise IsADirectory(f"{ds.name}/{path} holds files (remove them "
                                           "first, or rm recursively)")
                    with translate(path):
                        mount.remove_local_dir(under)     # empty by now (files go first)
                    removed += 1
                    self._forget_dir(ds, path)
                    continue
                with translate(path):
                    mount.fs.rm_file(under)
                removed += 1
                old.append(entry)
                self._gone_file(ds, path)
                parents.add(path.rpartition("/")[0])
        finally:
            self._prune(ds, parents)
            self._changed(ds, [e for e in old if e])
        return {"removed": removed, "missing": missing}

    def op_copy(self, ns: str, args: dict) -> dict:
        """Copy one file to another path of the same mount (the store copies it)."""
        ds, src = self._writable(ns, args)
        dst = normalize(arg_str(args, "to"))
        smount, _, sunder = self._mount(ds, src)
        dmount, _, dunder = self._mount(ds, dst)
        if smount is not dmount:
            raise NotSupported(f"copy across mounts ({src} -> {dst}): read and write it")
        if self.pending.kept(ds, src) is not None or self.pending.busy(ds, dst):
            # a kept source is not in the store; a kept target would be uploaded over
            # the copy: read and written again, the copy is a close like any other
            raise NotSupported(f"{ds.name}/{src} -> {dst}: a file kept in the cache is "
                               "copied by reading and writing it")
        old = self._old_entry(ds, dst)
        with translate(src):
            if smount.protocol == "file":
                smount.fs.makedirs(smount.fs._parent(dunder), exist_ok=True)
                if os.path.islink(dunder):     # a copy replaces a link, as a write does
                    os.unlink(dunder)
            smount.fs.cp_file(sunder, dunder)
        entry = self.listings.entry(ds, dst, refresh=True)
        self._show_dirs(ds, dst)
        self._changed(ds, [old] if old and old.get("fid") != entry.get("fid") else [])
        return {"entry": entry}

    def op_mkdir(self, ns: str, args: dict) -> dict:
        """Make a directory (and those above it). An object store has no empty
        directories: nothing is made there, and it shows once a file is in it."""
        ds, path = self._writable(ns, args)
        mount, _, under = self._mount(ds, path)
        made = mount.protocol == "file"
        if made:
            with translate(path):
                mount.fs.makedirs(under, exist_ok=True)
            self._show_dirs(ds, path + "/-")
            self._changed(ds, [])
        return {"made": made}

    def op_sync(self, ns: str, args: dict) -> dict:
        """How many files written under a path are not in the under store yet
        (async-through's, still kept on their workers), waiting up to `wait` seconds
        (at most SYNC_WAIT: the client asks again) for that to be none. through and
        cache-through finish each file at close; must-cache's are never uploaded."""
        ds, path = target(self.core, self._lock, ns, args)
        wait = args.get("wait", 0)
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or wait < 0:
            raise InvalidRequest("sync: 'wait' must be a number of seconds")
        files, nbytes = self.pending.wait(ns, ds.name, path, min(float(wait), SYNC_WAIT))
        return {"pending": files, "pending_bytes": nbytes, "write_mode": ds.write_mode,
                "path": f"fluid://{ds.name}/{path}".rstrip("/")}

    # -- listings and blocks --------------------------------------------------------------
    def _old_entry(self, ds: Dataset, path: str) -> dict | None:
        """What the held listings say of `path` (never a store call: a write into a
        directory of a million files lists nothing), or None: a file's old version,
        whose blocks go once it changes. Blocks of a version not held here are under
        a file id no listing names any more: never read, evicted in time."""
        e = self.listings.held_entry(ds, path)
        return e if e is not None and e.get("type") == "file" else None

    def _show_dirs(self, ds: Dataset, path: str) -> None:
        """Each directory above `path` shows in its parent's held listing."""
        parts, started = path.split("/"), time.monotonic()
        with self._lock:
            for i in range(1, len(parts)):
                parent, child = "/".join(parts[:i - 1]), parts[i - 1]
                held = self.core.listing(ds.namespace, ds.name, parent, None)
                if held is not None and held.find(child) is None:
                    self.core.store_listing(ds.namespace, ds.name, parent,
                                            held.with_entry(child, (DIR, 0, "", None, None)),
                                            None, started)

    def _gone_file(self, ds: Dataset, path: str) -> None:
        parent, _, child = path.rpartition("/")
        with self._lock:
            held = self.core.listing(ds.namespace, ds.name, parent, None)
            if held is not None and held.find(child) is not None:
                self.core.store_listing(ds.namespace, ds.name, parent,
                                        held.with_entry(child, None), None, time.monotonic())

    def _forget_dir(self, ds: Dataset, path: str) -> None:
        with self._lock:
            self.core.forget_listing(ds.namespace, ds.name, path, time.monotonic())
        self._gone_file(ds, path)

    def _prune(self, ds: Dataset, dirs: set[str]) -> None:
        """An object store keeps no empty directories: one whose files are all removed
        is gone (its listing forgotten, its name out of its parent's), and so on up.
        One whose listing is not held is listed again when asked (its parent's listing
        is forgotten). Local directories stay until removed."""
        for d in sorted(dirs, key=lambda p: p.count("/"), reverse=True):
            while d and not ds.is_virtual_dir(d):
                spec, rel = ds.resolve(d)
                if not rel or self.listings.mount(ds, spec).protocol == "file":
                    break
                with self._lock:
                    held = self.core.listing(ds.namespace, ds.name, d, None)
                    if held is None:
                        self.core.forget_listing(ds.namespace, ds.name,
                                                 d.rpartition("/")[0], time.monotonic())
                if held is None or len(held):
                    break
                self._forget_dir(ds, d)
                d = d.rpartition("/")[0]

    def _changed(self, ds: Dataset, old: list[dict]) -> None:
        """Every client drops its listings of `ds`; the blocks of `old` entries go."""
        with self._lock:
            self.core.bump_epoch(ds.namespace, ds.name)
        bs = self.config.block_size
        keys = [blocks.block_key(e["fid"], i, bs) for e in old
                for i in range(max(1, blocks.block_count(e["size"], bs)))]
        if keys:
            try:
                self._free_keys(keys)
            except Exception as exc:  # noqa: BLE001 - the new version is listed already
                log.warning("freeing %d blocks of replaced files: %s", len(keys), exc)
