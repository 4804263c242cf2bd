"""The master's membership: which workers there are and how to reach them.

Owns: telling the cluster's workers from others (the worker secret), their Ray handles,
when each was last heard from, the workers lost (kept for `status`), the Ray nodes seen
dead, which block report of each worker has been applied (and waiting for one), each
worker's per-dataset hits and misses, keeping one worker on every alive node (like a
DaemonSet), calling workers, and the background round that runs every heartbeat
interval (it also calls the master's `every_round` hook).
Never: answer clients, journal anything, or know what a worker is made of: a new worker
is made by the injected `spawn(node_id, config) -> handle` (fluidcache/cluster.py).
"""
from __future__ import annotations

import hmac
import logging
import threading
import time
from typing import Callable, NamedTuple

import ray

from .. import names, placement
from ..config import Config
from ..errors import AccessDenied
from .blockmap import BlockMap
from .core import MasterCore

log = logging.getLogger(__name__)

Spawn = Callable[[str, dict], object]      # (Ray node id, worker config) -> actor handle


class Counts(NamedTuple):
    hits: int
    misses: int


class Membership:
    def __init__(self, core: MasterCore, blocks: BlockMap, lock: threading.RLock,
                 config: Config, spawn: Spawn | None,
                 every_round: Callable[[float], None] = lambda now: None) -> None:
        self.core, self.blocks, self._lock, self.config = core, blocks, lock, config
        self._spawn, self._every_round = spawn, every_round
        self.handles: dict[str, object] = {}       # worker id (= Ray node id) -> handle
        self._seen: dict[str, float] = {}          # worker id -> last heartbeat (monotonic)
        self.lost: dict[str, dict] = {}            # worker id -> its last info
        self._dead_nodes: set[str] = set()         # Ray nodes seen dead
        self._applied: dict[str, int] = {}         # worker id -> last report seq applied
        self._applied_cv = threading.Condition(lock)
        self._ds_counts: dict[str, dict] = {}      # worker -> {"ns/name": [hits, misses]}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_secret(self, secret: str) -> None:
        """Only the workers this master made know the worker secret."""
        if not hmac.compare_digest(str(secret).encode(), self.core.worker_secret.encode()):
            raise AccessDenied("this call is for the cluster's workers only")

    # -- heartbeats --------------------------------------------------------------------
    def heartbeat(self, info: dict, report: dict | None = None) -> dict:
        """A worker says it is alive (and how to reach it) and what its blocks did.
        Asks for a full report when it does not know the worker's blocks. Being alive is
        noted before any lock is taken, and no lock here is held for long: a heartbeat
        never waits on a long planning walk (those take no master lock)."""
        wid = info["id"]
        if info["node_id"] in self._dead_nodes:
            return {"version": -1}   # a straggler of a dead node: never routed to again
        self._seen[wid] = time.monotonic()
        with self._lock:
            self.lost.pop(wid, None)
            version = self.core.register_worker(info)
            rules = self.core.rules_version
        report = report or {}
        if not report.get("full") and not self.blocks.known(wid):
            return {"version": version, "resync": True, "rules": rules,
                    "inc": self.core.incarnation}
        self.blocks.apply(wid, report)
        with self._lock:
            seq = report.get("seq")
            if isinstance(seq, int):
                self._applied[wid] = max(seq, self._applied.get(wid, 0))
                self._applied_cv.notify_all()
            if isinstance(report.get("by_dataset"), dict):
                self._ds_counts[wid] = report["by_dataset"]
        return {"version": version, "rules": rules, "inc": self.core.incarnation}

    def wait_applied(self, seqs: dict[str, int], timeout: float = 15.0) -> bool:
        """Wait until each worker's report `seq` has been applied (they beat at once)."""
        deadline = time.monotonic() + timeout
        with self._applied_cv:
            while any(self._applied.get(w, 0) < s for w, s in seqs.items()
                      if w in self.core.workers):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._applied_cv.wait(left)
        return True

    def counts(self, owner: str) -> Counts:
        """A dataset's hits and misses over all workers (their last heartbeats)."""
        with self._lock:
            rows = [Counts(*c.get(owner, (0, 0))[:2]) for c in self._ds_counts.values()]
        return Counts(sum(r.hits for r in rows), sum(r.misses for r in rows))

    # -- workers -----------------------------------------------------------------------
    def alive(self) -> list[dict]:
        """The infos of the workers in the cluster map."""
        with self._lock:
            return list(self.core.cluster_map()["workers"])

    def handle(self, wid: str):
        """A worker's Ray handle (None: not known and not found by its name)."""
        handle = self.handles.get(wid)
        if handle is None and ray.is_initialized():      # never start Ray just to look
            try:
                handle = ray.get_actor(names.worker_actor(wid), namespace=names.RAY_NAMESPACE)
            except ValueError:
                return None
        return handle

    def call(self, wids, method: str, *args, timeout: float = 60.0) -> dict:
        """Call `method` on each worker at once; worker id -> result (absent: no answer)."""
        refs = {}
        for wid in wids:
            handle = self.handle(wid)
            if handle is not None:
                refs[wid] = getattr(handle, method).remote(*args)
        out = {}
        for wid, ref in refs.items():
            try:
                out[wid] = ray.get(ref, timeout=timeout)
            except Exception as exc:  # noqa: BLE001 - a worker gone is reported, not fatal
                log.warning("worker %s: %s failed: %s", wid, method, exc)
        return out

    def deploy(self, timeout: float = 60.0) -> list[str]:
        """One worker on every alive Ray node; returns the ids of registered workers.
        From then on the master keeps it so, like a DaemonSet."""
        self.ensure_workers()
        deadline = time.monotonic() + timeout
        ids = []
        for nid, handle in list(self.handles.items()):
            info = ray.get(handle.info.remote(), timeout=max(1, deadline - time.monotonic()))
            self.heartbeat(info)
            ids.append(nid)
        self.start()
        return sorted(ids)

    def ensure_workers(self) -> None:
        """A worker on every alive node that has none; the workers of dead nodes are lost."""
        alive = placement.nodes_for_workers(ray.nodes(), self.config.node_selector)
        for nid in sorted(alive - set(self.handles)):
            try:
                handle = ray.get_actor(names.worker_actor(nid), namespace=names.RAY_NAMESPACE)
            except ValueError:
                if self._spawn is None:
                    log.error("node %s has no worker and this master cannot make one", nid)
                    continue
                handle = self._spawn(nid, dict(self.config.to_dict(),
                                               cluster_id=self.core.cluster_id,
                                               worker_secret=self.core.worker_secret))
            self.handles[nid] = handle
        for nid in set(self.handles) - alive:
            self._dead_nodes.add(nid)
            handle = self.handles.pop(nid)
            try:   # its node is gone: do not let Ray keep trying to restart it there
                ray.kill(handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
            self.mark_lost(nid)

    def mark_lost(self, worker_id: str) -> None:
        with self._lock:
            info = self.core.workers.get(worker_id)
            if info is not None:
                self.lost[worker_id] = info
                self.core.remove_worker(worker_id)   # clients stop routing to it
            self.blocks.drop_worker(worker_id)
            self._seen.pop(worker_id, None)

    # -- the background round ----------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name="fluidcache-membership")
            self._thread.start()

    def _loop(self) -> None:
        interval = self.config.heartbeat_interval
        while not self._stop.wait(interval):
            try:
                self.ensure_workers()
                now = time.monotonic()
                with self._lock:
                    late = [w for w, t in self._seen.items() if now - t > 3 * interval]
                for wid in late:
                    log.warning("worker %s missed its heartbeats: marked lost", wid)
                    self.mark_lost(wid)
                self._every_round(now)
            except Exception:  # membership must keep running
                log.exception("membership round failed")

    def stop(self, keep_cache: bool = False) -> None:
        """Every worker stops serving and gives its memory tier back (unless
        `keep_cache`), then the workers go."""
        self._stop.set()
        refs = [h.release.remote(keep_cache) for h in self.handles.values()]
        if refs:
            try:
                ray.wait(refs, num_returns=len(refs), timeout=30)
            except Exception:  # noqa: BLE001 - a worker already gone has nothing to release
                pass
        for handle in list(self.handles.values()):
            try:
                ray.kill(handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.handles.clear()
