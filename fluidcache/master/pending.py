"""The master's side of kept files: async-through files not uploaded yet, must-cache files.

A worker that kept a file in its journal tells us (`add`); we list it in its parent's
listing with the version `c:HOLDER:ID` (every read goes to that worker), above whatever
the store lists there (`merge`, applied to every listing fetched), move the dataset's
epoch and free the blocks of the version the path held before. Uploads ask us first
(`begin`): only the newest close of a path goes, and not while an older one of the same
path is still being uploaded (the store ends with the last close); an upload done
(`done`) is listed from the store's answer and leaves the kept set. `sync` waits on a
condition for a path's uploads. Removing a kept file tells its holder to drop it; one
removed while its upload is under way is removed from the store when that upload ends.
Owns: the kept set (soft state: workers tell it again when the master restarts, as
they find their journals), uploads' turns, the ids dropped in this run.
Never: hold its lock while the master's lock, a store or a worker is asked.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from ..dataset import JOURNALED, Dataset, normalize
from ..errors import AlreadyExists, InvalidRequest, NotFound, Unavailable, UnderStoreError
from ..understore.versions import cached_version
from .listing import DIR, FILE

log = logging.getLogger(__name__)
_DROPPED_KEPT = 100_000      # ids remembered as removed or replaced (a late upload drops)


@dataclass
class Kept:
    id: str
    holder: str          # the worker that keeps it
    size: int
    closed: float        # wall-clock time of its close
    mode: str
    uid: str

    def row(self) -> tuple:
        return (FILE, self.size, cached_version(self.holder, self.id), self.closed, None)


class Pending:
    def __init__(self, core, lock: threading.RLock, listings, writes,
                 drop_on: Callable[[str, list[str]], None]) -> None:
        """`writes`: the master's Writes (listing a written file, freeing old blocks);
        `drop_on(worker id, ids)`: that worker drops these kept files. An upload's turn
        is held until it is done or released, or its worker leaves the cluster."""
        self.core, self._lock, self.listings, self.writes = core, lock, listings, writes
        self._drop_on = drop_on
        self._cv = threading.Condition()
        self.files: dict[tuple[str, str], dict[str, Kept]] = {}
        self._turns: dict[tuple[str, str, str], tuple[str, str]] = {}  # path -> (id, holder)
        self._dropped: OrderedDict[str, bool] = OrderedDict()   # id -> removed (not replaced)
        self.draining: Callable[[], set] = set    # workers draining: still alive

    # -- from workers ---------------------------------------------------------------------
    def add(self, rec: dict, holder: str, exclusive: bool, again: bool) -> dict:
        """A kept file (its journal record): listed, shown to every client. `again`: told
        after a restart (ours or the worker's): a later close of the path wins."""
        ns, name = _str(rec, "ns"), _str(rec, "ds")
        ds = self._dataset(ns, name, _str(rec, "uid"))
        path = normalize(_str(rec, "path"))
        _, rel = ds.resolve(path)
        if not rel or rec.get("mode") not in JOURNALED or rec.get("mode") != ds.write_mode:
            raise InvalidRequest(f"{name}/{path}: not a file this dataset keeps")
        k = Kept(_str(rec, "id"), holder, int(rec["size"]), float(rec["closed"]),
                 rec["mode"], ds.uid)
        old, alive = None, self._alive()
        with self._cv:
            if k.id in self._dropped:
                if self._end_turn(ns, name, path, k.id) and self._dropped[k.id] and \
                        path not in self.files.get((ns, name), {}):
                    # removed while its worker, since restarted, was uploading it: what
                    # that upload may have put in the store goes too
                    gone = True
                else:
                    gone = False
                superseded = {"state": "superseded", "inc": self.core.incarnation}
            else:
                superseded = None
        if superseded is not None:
            if gone:
                self.writes.remove_uploaded(ns, name, path)
            return superseded
        with self._cv:
            files = self.files.setdefault((ns, name), {})
            cur = files.get(path)
            if cur is not None and cur.id != k.id:
                if again and cur.closed > k.closed:
                    self._remember(k.id, False)
                    self._end_turn(ns, name, path, k.id)
                    return {"state": "superseded", "inc": self.core.incarnation}
                if exclusive:
                    raise AlreadyExists(f"{name}/{path} exists")
                old = cur
                self._remember(cur.id, False)
            files[path] = k
        if exclusive and old is None:
            held = self.listings.held_entry(ds, path)
            if held is not None and held.get("type") == "file" and \
                    not str(held.get("version", "")).startswith("c:"):
                with self._cv:
                    files.pop(path, None)
                raise AlreadyExists(f"{name}/{path} exists")
        if old is not None and old.holder and \
                not self._turn_of(ns, name, path, old.id, alive):
            self._drop_on(old.holder, [old.id])
        before = self.listings.held_entry(ds, path)
        entry = self.listings.put_file(ds, path, k.row())
        self.writes.shown(ds, path, [before] if before and before.get("type") == "file"
                          and before.get("fid") != entry.get("fid") else [])
        return {"state": "ok", "entry": entry, "inc": self.core.incarnation}

    def begin(self, ns: str, name: str, uid: str, path: str, fid: str) -> dict:
        """May this kept file's upload start now? go, wait (an older close of the path
        is being uploaded), drop (removed or replaced), unknown (tell us again)."""
        self._dataset(ns, name, uid)
        path = normalize(path)
        alive = self._alive()
        with self._cv:
            if fid in self._dropped:
                self._end_turn(ns, name, path, fid)
                return {"state": "drop"}
            k = self.files.get((ns, name), {}).get(path)
            if k is None or k.id != fid:
                return {"state": "unknown"}
            turn = self._turns.get((ns, name, path))
            if turn is not None and turn[0] != fid and turn[1] in alive:
                return {"state": "wait"}
            self._turns[(ns, name, path)] = (fid, k.holder)
        return {"state": "go"}

    def release(self, ns: str, name: str, uid: str, path: str, fid: str) -> dict:
        """An upload failed before it reached the store: its turn is given back."""
        path = normalize(path)
        with self._cv:
            self._end_turn(ns, name, path, fid)
        return {"released": True}

    def done(self, ns: str, name: str, uid: str, path: str, fid: str) -> dict:
        """An upload is in the store: listed from the store's answer (when it is still
        the newest close of its path); removed meanwhile: removed from the store too."""
        path = normalize(path)
        with self._cv:
            if self._turns.get((ns, name, path), ("",))[0] == fid:
                del self._turns[(ns, name, path)]
            files = self.files.get((ns, name), {})
            k = files.get(path)
            current = k is not None and k.id == fid
            if current:
                del files[path]
            removed = self._dropped.get(fid, False)
            self._remember(fid, removed)         # told again after a restart: dropped
            newer = files.get(path) is not None
            self._cv.notify_all()
        if current:
            try:
                return {"entry": self.writes.wrote(ns, name, path, uid)}
            except (Unavailable, UnderStoreError):
                with self._cv:                   # still listed as kept: told again later
                    if path not in files:
                        files[path] = k
                    self._dropped.pop(fid, None)
                raise
            except NotFound:                     # removed from the store meanwhile
                self.writes.relist(self._dataset(ns, name, uid), path)
                return {"entry": None}
        if removed and not newer:
            self.writes.remove_uploaded(ns, name, path)
        return {"entry": None}

    def gone(self, ns: str, name: str, uid: str, path: str, fid: str) -> dict:
        """A must-cache file's TTL ended on its holder: it leaves the listings."""
        ds = self._dataset(ns, name, uid)
        path = normalize(path)
        with self._cv:
            files = self.files.get((ns, name), {})
            if files.get(path) is None or files[path].id != fid:
                return {"gone": False}
            del files[path]
            self._remember(fid, True)
        self.writes.relist(ds, path)
        return {"gone": True}

    # -- from the master's ops ------------------------------------------------------------
    def take(self, ds: Dataset, path: str) -> Kept | None:
        """`rm` of a kept file: it leaves the kept set; its holder drops it (or, while
        its upload is under way, what it uploads is removed when that ends)."""
        alive = self._alive()
        with self._cv:
            k = self.files.get((ds.namespace, ds.name), {}).pop(path, None)
            if k is None:
                return None
            self._remember(k.id, True)
            uploading = self._turn_of(ds.namespace, ds.name, path, k.id, alive)
            self._cv.notify_all()
        if not uploading:
            self._drop_on(k.holder, [k.id])
        return k

    def kept(self, ds: Dataset, path: str) -> Kept | None:
        with self._cv:
            return self.files.get((ds.namespace, ds.name), {}).get(path)

    def busy(self, ds: Dataset, path: str) -> bool:
        """Is `path` kept, or being uploaded (a removed kept file whose upload is under
        way: what it puts in the store is removed when it ends)?"""
        with self._cv:
            return path in self.files.get((ds.namespace, ds.name), {}) or \
                (ds.namespace, ds.name, path) in self._turns

    def merge(self, ds: Dataset, path: str, rows: list) -> bool:
        """Add the kept files directly in directory `path` (and the directories that
        hold kept files below it) to a listing's `rows`; True if any was added."""
        prefix = f"{path}/" if path else ""
        with self._cv:
            kept = [(p, k) for p, k in self.files.get((ds.namespace, ds.name), {}).items()
                    if p.startswith(prefix)]
        if not kept:
            return False
        names = {r[0] for r in rows}
        for p, k in kept:
            head, sep, _ = p[len(prefix):].partition("/")
            if not sep:
                rows.append((head, *k.row()))
            elif head not in names:
                rows.append((head, DIR, 0, "", None, None))
            names.add(head)
        return True

    def forget(self, ns: str, name: str) -> None:
        """A removed dataset: its kept files go from every holder."""
        with self._cv:
            files = self.files.pop((ns, name), {})
            for k in files.values():
                self._remember(k.id, True)
            self._cv.notify_all()
        by_holder: dict[str, list[str]] = {}
        for k in files.values():
            by_holder.setdefault(k.holder, []).append(k.id)
        for holder, ids in by_holder.items():
            self._drop_on(holder, ids)

    def waiting(self, ns: str, name: str, path: str) -> tuple[int, int]:
        """(files, bytes) under `path` not in the store yet (async-through)."""
        with self._cv:
            return self._waiting(ns, name, path)

    def _waiting(self, ns: str, name: str, path: str) -> tuple[int, int]:
        prefix = f"{path}/"
        ks = [k for p, k in self.files.get((ns, name), {}).items()
              if k.mode == "async-through" and (not path or p == path or p.startswith(prefix))]
        return len(ks), sum(k.size for k in ks)

    def wait(self, ns: str, name: str, path: str, timeout: float) -> tuple[int, int]:
        """Wait up to `timeout` s until nothing under `path` waits for its upload."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                got = self._waiting(ns, name, path)
                left = deadline - time.monotonic()
                if not got[0] or left <= 0:
                    return got
                self._cv.wait(left)

    def totals(self, ns: str | None = None) -> dict:
        """Kept files of namespace `ns` (None: all) in all: waiting for their upload
        (async-through) and kept only in the cache (must-cache)."""
        with self._cv:
            ks = [k for (n, _), files in self.files.items() if ns in (None, n)
                  for k in files.values()]
        up = [k for k in ks if k.mode == "async-through"]
        cached = [k for k in ks if k.mode == "must-cache"]
        return {"pending_files": len(up), "pending_bytes": sum(k.size for k in up),
                "kept_files": len(cached), "kept_bytes": sum(k.size for k in cached)}

    # -- helpers --------------------------------------------------------------------------
    def _dataset(self, ns: str, name: str, uid: str) -> Dataset:
        with self._lock:
            ds = self.core.dataset(ns, name)
        if ds.uid != uid:
            raise NotFound(f"dataset {name} was removed (or made again) since the file "
                           "was written")
        return ds

    def _turn_of(self, ns: str, name: str, path: str, fid: str, alive: set) -> bool:
        turn = self._turns.get((ns, name, path))
        return turn is not None and turn[0] == fid and turn[1] in alive

    def _end_turn(self, ns: str, name: str, path: str, fid: str) -> bool:
        """`fid`'s turn on the path ends (True if it held it). Under `_cv`."""
        if self._turns.get((ns, name, path), ("",))[0] == fid:
            del self._turns[(ns, name, path)]
            return True
        return False

    def _alive(self) -> set:
        """The ids of the workers in the cluster now (taken before `_cv`)."""
        with self._lock:
            return set(self.core.workers) | self.draining()

    def held_by(self, holder: str) -> dict:
        """The kept files only `holder` has: {"pending_files": waiting for their
        upload, "kept_files": must-cache}."""
        with self._cv:
            ks = [k for files in self.files.values() for k in files.values()
                  if k.holder == holder]
        return {"pending_files": sum(k.mode == "async-through" for k in ks),
                "kept_files": sum(k.mode == "must-cache" for k in ks)}

    def _remember(self, fid: str, removed: bool) -> None:
        self._dropped[fid] = removed
        while len(self._dropped) > _DROPPED_KEPT:
            self._dropped.popitem(last=False)


def _str(rec: dict, key: str) -> str:
    v = rec.get(key) if isinstance(rec, dict) else None
    if not isinstance(v, str):
        raise InvalidRequest(f"a kept file's record needs a string {key!r}")
    return v
