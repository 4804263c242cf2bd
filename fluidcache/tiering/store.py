"""The block store of one worker: the tier core plus the files on disk.

Owns: tier directories, the lock around the core, verified reads, atomic writes, the
rescan that recovers a store after a restart, and the counters of what went wrong.
A failed write (full disk, unwritable directory) never fails a read: the block is just
not cached, a warning is logged and `write_failures` counts it.
Never: fetch from the under store or speak to the network.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence

from . import layout
from .core import TierIndex
from .policy import make

log = logging.getLogger(__name__)


class BlockStore:
    def __init__(self, tiers: Sequence, eviction: str = "lru", clock=None) -> None:
        """`tiers`: objects with `medium`, `path` and `quota` (config.TierConfig)."""
        names, seen = [], {}
        for t in tiers:
            seen[t.medium] = seen.get(t.medium, 0) + 1
            names.append(t.medium if seen[t.medium] == 1 else f"{t.medium}{seen[t.medium]}")
        self.paths = [os.path.abspath(t.path) for t in tiers]
        self.index = TierIndex([(n, t.quota) for n, t in zip(names, tiers)],
                               lambda: make(eviction, clock))
        self._lock = threading.Lock()
        self.write_failures = 0
        self.corrupt_blocks = 0
        for p in self.paths:
            try:
                os.makedirs(p, exist_ok=True)
            except OSError as exc:
                log.warning("tier directory %s is unusable: %s", p, exc)
        self.rescan()

    def rescan(self) -> int:
        """Rebuild the index from the tier directories; returns the blocks found."""
        found = 0
        for i, path in enumerate(self.paths):
            for key, size in layout.scan(path):
                with self._lock:
                    ok = self.index.add_existing(key, i, size)
                    e = self.index.entries.get(key)
                    held_here = e is not None and e.tier == i   # this very file: keep it
                if ok:
                    found += 1
                elif not held_here:
                    layout.remove_block(path, key)
        return found

    def get(self, key: str) -> memoryview | None:
        """The verified bytes of a cached block, or None (absent, or found corrupt)."""
        with self._lock:
            tier = self.index.tier_of(key)
        if tier is None:
            return None
        try:
            data = layout.read_block(self.paths[tier], key)
        except (layout.CorruptBlock, OSError) as exc:
            log.warning("dropping block %s from %s: %s", key, self.paths[tier], exc)
            self.corrupt_blocks += 1
            data = None
        if data is None:
            self.remove(key)
            return None
        with self._lock:
            self.index.access(key)
        return data

    def touch(self, key: str) -> bool:
        """A hit seen elsewhere (a short-circuit reader); True if the block is held."""
        with self._lock:
            self.index.access(key)
            return key in self.index

    def put(self, key: str, data) -> bool:
        """Cache a block; False if no tier took it (no room, policy refused, write failed)."""
        size = len(data) + layout.TRAILER.size
        with self._lock:
            if key in self.index.entries:
                return key in self.index
            res = self.index.reserve(key, size)
        if res is None:
            return False
        for victim in res.evict:
            layout.remove_block(self.paths[res.tier], victim)
        try:
            layout.write_block(self.paths[res.tier], key, data)
        except OSError as exc:
            with self._lock:
                self.index.abort(key)
                self.write_failures += 1
            log.warning("cannot cache block %s in %s (%s); serving it uncached",
                        key, self.paths[res.tier], exc)
            return False
        with self._lock:
            self.index.commit(key)
        return True

    def remove(self, key: str) -> bool:
        with self._lock:
            e = self.index.remove(key)
        if e is not None:
            layout.remove_block(self.paths[e.tier], key)
        return e is not None

    def pin(self, key: str, pinned: bool = True) -> bool:
        """Keep a held block from eviction (or release it); False if the block is not held."""
        with self._lock:
            if key not in self.index:
                return False
            self.index.pin(key, pinned)
            return True

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self.index

    def tiers(self) -> list[dict]:
        with self._lock:
            return [{"name": t.name, "path": p, "capacity": t.capacity, "used": t.used,
                     "blocks": len(t.blocks)} for t, p in zip(self.index.tiers, self.paths)]

    @property
    def evictions(self) -> int:
        return self.index.evictions
