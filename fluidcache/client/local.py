"""Short-circuit reads: blocks read straight from the tier files of this machine's
workers, and the hits reported back to them.

Owns: reading and verifying a local tier file (its checksum, and a trailer that names
the file and index asked for); counting those reads (`short_circuit`); queueing a hit
for the worker whose file it was and reporting the queue in batches (every
`flush_every` seconds, at `flush_batch` hits, at exit, also of a multiprocessing child),
from a thread of this process.
Never: write or remove a tier file (a corrupt one is skipped; its worker drops it when
it next reads it), or fail a read because a hit could not be reported.
"""
from __future__ import annotations

import atexit
import collections
import logging
import multiprocessing.util as mp_util
import os
import threading
import weakref

from ..config import ClientSettings
from ..errors import FluidError
from ..tiering import layout
from .cluster import Cluster
from .conn import FORKS

log = logging.getLogger(__name__)
TOUCH_CHUNK = 4096   # keys per touch message (well under a frame)


class LocalTiers:
    """Reads of this machine's workers' tier directories (as the cluster map lists
    them). One lives in one process: the filesystem makes a new one after a fork."""

    def __init__(self, cluster: Cluster, settings: ClientSettings, counters: dict) -> None:
        self.cluster, self.counters = cluster, counters
        counters.setdefault("short_circuit", 0)
        self.flush_every, self.flush_batch = settings.flush_every, settings.flush_batch
        # hits waiting to be reported: advisory, so bounded (the oldest are dropped)
        self._pending: collections.deque[tuple[str, str]] = collections.deque(
            maxlen=settings.pending_max)
        self._lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        self._wake = threading.Event()
        self._gen = FORKS[0]
        _LIVE.add(self)           # flushed at exit; nothing here keeps it alive
        self._finalizer = weakref.finalize(self, self._wake.set)

    def close(self) -> None:
        """Report pending hits and stop the reporting thread now."""
        self.flush()
        self._finalizer()

    # -- reads --------------------------------------------------------------------------
    def read(self, key: str, length: int, expect: tuple[str, int]) -> bytes | None:
        """The verified bytes of block `key` (`length` bytes of file id and index
        `expect`) from a local tier file, or None when no local tier holds it."""
        return self._first(layout.read_exact, key, length, expect)

    def read_into(self, key: str, dst: memoryview, expect: tuple[str, int]) -> bool:
        """Read the whole block `key` straight into `dst` and verify it there; False
        when no local tier holds it."""
        return bool(self._first(layout.read_block_into, key, dst, expect))

    def _first(self, read, key: str, arg, expect: tuple[str, int]):
        """`read(tier dir, key, arg, expect)` over this machine's workers' tiers: the
        first answer that is not None or False, counted and reported as a hit; a corrupt
        or unreadable file is skipped (the worker drops a corrupt block when it next
        reads it)."""
        for address, paths in self.cluster.local_workers:
            for p in paths:
                try:
                    found = read(p, key, arg, expect)
                except (layout.CorruptBlock, OSError) as exc:
                    log.warning("short-circuit: block %s in %s: %s", key, p, exc)
                    continue
                if found is not None and found is not False:
                    self._hit(address, key)
                    return found
        return None

    def holds(self, key: str) -> bool:
        """Whether a local tier has a file for block `key` (not read, not verified)."""
        return any(os.path.exists(layout.block_path(p, key))
                   for _, paths in self.cluster.local_workers for p in paths)

    # -- hit reports (batched, cheap) ---------------------------------------------------
    def _hit(self, address: str, key: str) -> None:
        """Count a short-circuit hit and queue it for its worker (deque appends need no
        lock)."""
        self.counters["short_circuit"] += 1
        self._pending.append((address, key))
        if self._flusher is None:
            with self._lock:
                if self._flusher is None:
                    self._flusher = threading.Thread(
                        target=_flush_loop, daemon=True, name="fluidcache-hits",
                        args=(weakref.ref(self), self._wake, self.flush_every))
                    self._flusher.start()
        if len(self._pending) >= self.flush_batch:
            self._wake.set()

    def flush(self) -> None:
        """Send pending short-circuit hits to their workers now."""
        if self._gen != FORKS[0]:
            return              # a forked child's copy: the parent reports its own
        by_worker: dict[str, list[str]] = {}
        try:
            while True:
                address, key = self._pending.popleft()
                by_worker.setdefault(address, []).append(key)
        except IndexError:
            pass
        for address, keys in by_worker.items():
            for i in range(0, len(keys), TOUCH_CHUNK):
                try:
                    self.cluster.call(address, "touch", {"keys": keys[i:i + TOUCH_CHUNK]})
                except FluidError as exc:   # hits are advisory: never fail a read for them
                    log.debug("could not report %d hits to %s: %s", len(keys), address, exc)
                    break


_LIVE: "weakref.WeakSet[LocalTiers]" = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    for tiers in list(_LIVE):
        tiers.flush()


def _flush_at_child_exit(_anchor) -> None:
    """A multiprocessing child (a DataLoader worker process) ends with os._exit, where
    atexit handlers do not run but multiprocessing's finalizers do: its hits are
    reported then (else a worker never hears of them, and its eviction order and hit
    counts miss every short-circuit read of those processes). Registered as an
    after-fork hook of multiprocessing, which runs it in every child it starts (fork,
    spawn, forkserver) after it clears the finalizers the child inherited."""
    mp_util.Finalize(None, _flush_all, exitpriority=100)


class _Anchor:
    """What multiprocessing's after-fork registry holds (weakly) for the hook."""


_ANCHOR = _Anchor()
mp_util.register_after_fork(_ANCHOR, _flush_at_child_exit)


def _flush_loop(ref, wake: threading.Event, every: float) -> None:
    """Report hits every `every` seconds while the reader lives (a weak reference: the
    thread never keeps a dropped reader alive, and ends with it)."""
    while True:
        wake.wait(every)
        wake.clear()
        tiers = ref()
        if tiers is None or tiers._finalizer.alive is False:
            return
        tiers.flush()
        del tiers


__all__ = ["LocalTiers"]
