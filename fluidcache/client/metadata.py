"""The client's metadata cache: listings of directories, and each dataset's epoch.

All reading and writing of the client's cached metadata happens here (the filesystem
only asks the master and hands the answers in). A listing is served while it is within
its time to live *and* was fetched at the dataset's current metadata epoch. Every master
reply carries the epoch; when it moves (a refresh, an expiry that found changes, a
stale read listed again), every listing of that dataset is dropped. The filesystem asks
for the epoch itself when it has not seen one for `check_every` seconds, so a refresh
reaches a client within that time even when it reads only cached blocks (at once, for
datasets that take writes: listings.py asks every time).
Pure: the clock is injected; no I/O.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NamedTuple


class Listed(NamedTuple):
    expires: float
    epoch: str
    entries: list[dict]
    by_name: dict[str, dict]


def dataset_of(path: str) -> str:
    return path.partition("/")[0]


def older(a: str, b: str) -> bool:
    """Is epoch `a` older than `b`? Epochs of one master run ('run.n') are ordered by n;
    those of different runs are not (the newest one seen wins)."""
    ra, _, na = a.rpartition(".")
    rb, _, nb = b.rpartition(".")
    return ra == rb and na.isdigit() and nb.isdigit() and int(na) < int(nb)


class MetadataCache:
    def __init__(self, check_every: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.check_every, self.clock = check_every, clock
        self._lists: dict[str, Listed] = {}
        self._epochs: dict[str, tuple[str, float]] = {}     # dataset -> (epoch, seen at)
        self._misses: dict[str, int] = {}                   # directory -> infos not listed
        self._lock = threading.Lock()

    # -- epochs --------------------------------------------------------------------------
    def saw(self, dataset: str, epoch: str) -> None:
        """A reply said `dataset` is at `epoch`: a newer epoch drops its listings."""
        now = self.clock()
        with self._lock:
            known = self._epochs.get(dataset)
            if known is not None and older(epoch, known[0]):
                return                  # a late reply: what we know is newer
            if known is not None and known[0] != epoch:
                self._drop(dataset)
            self._epochs[dataset] = (epoch, now)

    def due(self, dataset: str) -> bool:
        """Should the caller ask for `dataset`'s epoch before trusting its listings?"""
        known = self._epochs.get(dataset)
        return known is not None and self.clock() - known[1] >= self.check_every

    def expire(self, dataset: str) -> None:
        """Ask for `dataset`'s epoch before its listings are trusted again (we changed
        it: the master moved it)."""
        with self._lock:
            known = self._epochs.get(dataset)
            if known is not None:
                self._epochs[dataset] = (known[0], float("-inf"))

    def epoch(self, dataset: str) -> str | None:
        known = self._epochs.get(dataset)
        return None if known is None else known[0]

    # -- listings ------------------------------------------------------------------------
    def put(self, path: str, entries: list[dict], ttl: float, epoch: str | None) -> None:
        listed = Listed(self.clock() + ttl, epoch or "", entries,
                        {e["name"]: e for e in entries})
        with self._lock:
            self._lists[path] = listed
            self._misses.pop(path, None)

    def _valid(self, path: str) -> Listed | None:
        hit = self._lists.get(path)
        if hit is None or hit.expires <= self.clock():
            return None
        ds = dataset_of(path)          # '' (the list of datasets) has no epoch
        if ds and hit.epoch != (self.epoch(ds) or ""):
            return None
        return hit

    def listing(self, path: str) -> list[dict] | None:
        hit = self._valid(path)
        return None if hit is None else hit.entries

    def entry(self, parent: str, path: str) -> tuple[dict | None, bool]:
        """(the cached entry of `path`, whether its parent's listing is valid here)."""
        hit = self._valid(parent)
        if hit is None:
            return None, False
        return hit.by_name.get(path), True

    def missed(self, parent: str) -> int:
        """Count an info of a file of `parent` that no listing answered; returns how many
        so far (after two, the caller lists the directory instead)."""
        with self._lock:
            n = self._misses[parent] = self._misses.get(parent, 0) + 1
        return n

    def invalidate(self, path: str | None = None) -> None:
        with self._lock:
            if path is None:
                self._lists.clear()
                self._misses.clear()
            else:
                self._lists.pop(path, None)
                self._lists.pop(path.rsplit("/", 1)[0], None)

    def _drop(self, dataset: str) -> None:
        for p in [p for p in self._lists if dataset_of(p) == dataset]:
            del self._lists[p]
        for p in [p for p in self._misses if dataset_of(p) == dataset]:
            del self._misses[p]
