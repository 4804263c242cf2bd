"""The block store of one worker: the tier core plus the files on disk.

Owns: tier directories, the lock around the core, verified reads, atomic writes, the
rescan that recovers a store after a restart, the maintenance thread that carries out
what the core plans (demotions when a tier crosses its high watermark, promotions of
blocks read from a lower tier, TTL expiry), and the counters of what went wrong.
A failed write (full disk, unwritable directory) never fails a read: the block is just
not cached, a warning is logged and `write_failures` counts it.
Never: fetch from the under store or speak to the network; read the core's tables (it
asks TierIndex through its methods, under the lock). Never moves blocks between tiers on
the caller's thread: reads and writes only wake the maintenance thread (a write deletes
the victims evicted to admit it, a read a block found corrupt).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from . import layout
from .core import Move, TierIndex
from .policy import make

log = logging.getLogger(__name__)


class Described(NamedTuple):
    meta: layout.Meta      # owner, file id and index, from the block's file
    size: int              # the block's data bytes (without its on-disk framing)


class BlockStore:
    def __init__(self, tiers: Sequence, eviction: str = "lru", promote: bool = True,
                 clock: Callable[[], float] | None = None, file_mode: int = 0o600) -> None:
        """`tiers`: objects with `medium`, `path`, `quota` and optionally `high`/`low`
        (config.TierConfig), fastest first. `clock` gives wall time for TTLs;
        `file_mode` the mode of block files (0600; 0640 for a shared fsGroup)."""
        self.file_mode = file_mode
        names, seen = [], {}
        for t in tiers:
            seen[t.medium] = seen.get(t.medium, 0) + 1
            names.append(t.medium if seen[t.medium] == 1 else f"{t.medium}{seen[t.medium]}")
        self.paths = [os.path.abspath(t.path) for t in tiers]
        self.mediums = [t.medium for t in tiers]
        self.names = names                        # "MEM", "SSD", "SSD2"...: per tier
        self.clock = clock or time.time
        self.promote = promote
        self.index = TierIndex(
            [(n, t.quota, getattr(t, "high", 0.95), getattr(t, "low", 0.7))
             for n, t in zip(names, tiers, strict=True)], lambda: make(eviction))
        self._lock = threading.Lock()
        self._promote: set[str] = set()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.write_failures = 0
        self.corrupt_blocks = 0
        self.read_bytes: dict[str, int] = {}      # tier name -> bytes read by the worker
        # listener(event, key, meta, size): "add" / "remove", called outside the lock;
        # the worker turns these into block reports for the master
        self.listener: Callable[[str, str, layout.Meta | None, int], None] | None = None
        for p in self.paths:
            try:
                os.makedirs(p, mode=0o700, exist_ok=True)
            except OSError as exc:
                log.warning("tier directory %s is unusable: %s", p, exc)
        self.rescan()

    def rescan(self) -> int:
        """Rebuild the index from the tier directories; returns the blocks found.
        Blocks are verified lazily, on their first read."""
        found = 0
        for i, path in enumerate(self.paths):
            for key, size in layout.scan(path):
                with self._lock:
                    if self.index.holds_copy(key, i):
                        continue            # this very copy is held (a live rescan)
                    ok = self.index.add_existing(key, i, size)   # False: a duplicate
                if ok:
                    found += 1
                    self._emit("add", key, None, size, tier=i)
                else:
                    layout.remove_block(path, key)
        return found

    def _emit(self, event: str, key: str, meta, size: int, tier: int | None = None) -> None:
        if self.listener is None:
            return
        if event == "add" and meta is None:
            try:
                meta = layout.read_meta(layout.block_path(self.paths[tier], key), key)
            except (OSError, layout.CorruptBlock):
                return      # found corrupt when it is first read, and dropped then
        if event == "add":  # listeners count the block's data, not its on-disk framing
            size -= layout.disk_size(0, meta)
        self.listener(event, key, meta, size)

    def describe(self, key: str) -> Described | None:
        """A held block's owner, file id and index (from its file) and its data size."""
        with self._lock:
            held = self.index.held(key)
        if held is None:
            return None
        try:
            meta = layout.read_meta(layout.block_path(self.paths[held.tier], key), key)
        except (OSError, layout.CorruptBlock):
            return None
        return Described(meta, held.size - layout.disk_size(0, meta))

    # -- reads and writes ---------------------------------------------------------------
    def get(self, key: str, expect: tuple[str, int] | None = None) -> memoryview | None:
        """The verified bytes of a cached block, or None (absent, or found corrupt: also
        when `expect`, (file id, index), is not what its trailer names)."""
        for _ in range(3):     # a block may move between tiers while we look
            with self._lock:
                tier = self.index.tier_of(key)
            if tier is None:
                return None
            try:
                data = layout.read_block(self.paths[tier], key, expect)
            except layout.CorruptBlock as exc:
                log.warning("dropping block %s from %s: %s", key, self.paths[tier], exc)
                self.corrupt_blocks += 1
                self._drop_if_at(key, tier)
                return None
            except OSError as exc:     # EMFILE, EIO...: serve from elsewhere, keep the block
                log.warning("cannot read block %s from %s now: %s", key, self.paths[tier], exc)
                return None
            if data is not None:
                self._accessed(key, tier)
                name = self.names[tier]
                with self._lock:
                    self.read_bytes[name] = self.read_bytes.get(name, 0) + len(data)
                return data
            with self._lock:
                moved = self.index.tier_of(key) != tier
            if not moved:                      # deleted under us: forget it
                self._drop_if_at(key, tier)
                return None
        return None

    def _drop_if_at(self, key: str, tier: int) -> None:
        with self._lock:
            if self.index.tier_of(key) != tier:
                return
            e = self.index.remove(key)
        if e is not None:
            layout.remove_block(self.paths[tier], key)
            self._emit("remove", key, None, e.size)

    def _accessed(self, key: str, tier: int) -> None:
        with self._lock:
            self.index.access(key)
            if self.promote and tier > 0:
                self._promote.add(key)
                self._wake.set()

    def touch(self, key: str) -> bool:
        """A hit seen elsewhere (a short-circuit reader); True if the block is held."""
        with self._lock:
            tier = self.index.tier_of(key)
        if tier is None:
            return False
        self._accessed(key, tier)
        return True

    def want(self, key: str, group: str) -> bool:
        """A reader of `group` will read the block soon: kept as a hit keeps it
        (uncounted), and no block of `group` evicts it before it is read. True if the
        block is held."""
        with self._lock:
            tier = self.index.tier_of(key)
            if tier is None or not self.index.want(key, group):
                return False
            if self.promote and tier > 0:       # promoted as a hit is
                self._promote.add(key)
                self._wake.set()
        return True

    def cool(self, key: str) -> bool:
        """A reader will not want the block again soon: it is evicted first, when room
        is needed (nothing is removed now). True if the block is held."""
        with self._lock:
            return self.index.cool(key)

    def put(self, key: str, data, meta: layout.Meta = layout.NO_META,
            group: str | None = None, prefetched: bool = False) -> bool:
        """Cache a block; False if no tier took it (no room, policy refused, write failed,
        no room but by evicting a block `group` wants: core.py's marks). A `prefetched`
        block is wanted by its group until read.
        `meta` (dataset, file id, index) is written with it, for reports after restarts."""
        size = layout.disk_size(len(data), meta)
        with self._lock:
            if self.index.known(key):
                return key in self.index
            res = self.index.reserve(key, size, group, prefetched)
        if res is None:
            return False
        for victim, vsize in zip(res.evict, res.sizes, strict=True):
            layout.remove_block(self.paths[res.tier], victim)
            self._emit("remove", victim, None, vsize)
        try:
            layout.write_block(self.paths[res.tier], key, data, meta, self.file_mode)
        except OSError as exc:
            with self._lock:
                self.index.abort(key)
                self.write_failures += 1
            log.warning("cannot cache block %s in %s (%s); serving it uncached",
                        key, self.paths[res.tier], exc)
            return False
        with self._lock:
            self.index.commit(key)
            if self.index.over_high():
                self._wake.set()
        self._emit("add", key, meta, size)
        return True

    def remove(self, key: str) -> bool:
        with self._lock:
            e = self.index.remove(key)
        if e is not None:
            layout.remove_block(self.paths[e.tier], key)
            self._emit("remove", key, None, e.size)
        return e is not None

    def free(self, key: str, force: bool = False) -> int | None:
        """Drop a block unless it is pinned (`force`: even then): the bytes it took on
        disk, 0 if it was not held, None if it is pinned and stays."""
        with self._lock:
            held = self.index.held(key)
            if held is None or held.moving:
                return 0
            if held.pinned and not force:
                return None
            e = self.index.remove(key)
        if e is None:
            return 0
        layout.remove_block(self.paths[e.tier], key)
        self._emit("remove", key, None, e.size)
        return e.size

    def size_of(self, key: str) -> int:
        """Bytes a held block takes on disk (0 if not held)."""
        with self._lock:
            return self.index.size_of(key)

    def tier_bytes(self, keys) -> dict[str, int]:
        """Bytes on disk of those of `keys` held here, per tier name."""
        out: dict[str, int] = {}
        with self._lock:
            for k in keys:
                held = self.index.held(k)
                if held is not None and not held.moving:
                    name = self.names[held.tier]
                    out[name] = out.get(name, 0) + held.size
        return out

    def pin(self, key: str, pinned: bool = True) -> bool:
        """Exempt a block from eviction (or release it). A pin on a block not held yet
        applies when it arrives. Returns whether the block is held now."""
        with self._lock:
            self.index.pin(key, pinned)
            return key in self.index

    def set_ttl(self, key: str, seconds: float | None) -> None:
        """Drop the block `seconds` from now (None: never)."""
        with self._lock:
            self.index.set_ttl(key, None if seconds is None else self.clock() + seconds)
        self._wake.set()

    # -- maintenance ----------------------------------------------------------------------
    def maintain(self) -> dict:
        """One round: expire, demote/evict above high watermarks, promote. Returns counts."""
        with self._lock:
            moves = self.index.plan(self.clock())
            wanted, self._promote = self._promote, set()
            for key in wanted:
                m = self.index.plan_promote(key)
                if m is not None:
                    moves.append(m)
        done = {"demote": 0, "promote": 0, "evict": 0, "expire": 0}
        for m in moves:
            if self._carry_out(m):
                done[m.reason] += 1
        return done

    def _carry_out(self, m: Move) -> bool:
        if m.dst is None:
            layout.remove_block(self.paths[m.src], m.key)
            self._emit("remove", m.key, None, m.size)
            return True
        try:
            if not layout.copy_block(self.paths[m.src], self.paths[m.dst], m.key,
                                     self.file_mode):
                raise FileNotFoundError(m.key)
        except (OSError, layout.CorruptBlock) as exc:
            with self._lock:
                self.index.cancel_move(m.key)
            if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
                self.write_failures += 1
                log.warning("cannot move block %s to %s: %s", m.key, self.paths[m.dst], exc)
            else:   # gone or corrupt at the source: forget it
                self._drop_if_at(m.key, m.src)
            return False
        with self._lock:
            self.index.finish_move(m.key, m.reason)
        layout.remove_block(self.paths[m.src], m.key)
        return True

    def start(self, interval: float = 1.0) -> "BlockStore":
        """Run maintenance in a daemon thread: when woken, and every `interval` s (TTLs)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True,
                                            name="fluidcache-tiers")
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    def _loop(self, interval: float) -> None:
        while not self._stopped:
            self._wake.wait(interval)
            self._wake.clear()
            try:
                while any(self.maintain().values()):
                    pass
            except Exception:  # maintenance must never die
                log.exception("tier maintenance failed")

    # -- views ----------------------------------------------------------------------------
    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self.index

    def in_memory(self, key: str) -> bool:
        """Is the block held in a memory tier (tmpfs: reading it does not wait on a disk)?"""
        with self._lock:
            tier = self.index.tier_of(key)
        return tier is not None and self.mediums[tier] == "MEM"

    def keys(self) -> list[str]:
        """The keys of every held block (a snapshot)."""
        with self._lock:
            return self.index.cached_keys()

    def tiers(self) -> list[dict]:
        with self._lock:
            usage = self.index.usage()
        return [{"name": t.name, "path": p, "capacity": t.capacity, "used": t.used,
                 "blocks": t.blocks, "high": t.high, "low": t.low}
                for t, p in zip(usage, self.paths, strict=True)]

    @property
    def evictions(self) -> int:
        return self.index.evictions

    @property
    def moves(self) -> dict:
        return dict(self.index.moves)
