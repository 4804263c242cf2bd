"""The master's membership: which workers there are and how to reach them.

Owns: telling the cluster's workers from others (the worker secret), their Ray handles,
when each was last heard from, the workers lost (kept for `status`), the Ray nodes seen
dead, the workers draining (out of the routing, still serving their peers) and retired
(drained: no worker is made on their node again while it lives), telling the rebalance
of every change (`on_change`), draining the nodes Ray's autoscaler drains, which block
report of each worker has been applied (and waiting for one), each worker's per-dataset
hits and misses, keeping one worker on every alive node (like a
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
        self.draining: dict[str, dict] = {}        # worker id -> its info (not routed to)
        self.retired: dict[str, str] = {}          # worker id -> its host (drained)
        self.on_change: Callable[[str, str], None] = lambda what, wid: None
        self.moving: Callable[[], bool] = lambda: False    # told to workers (rebalance)

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
        if info["node_id"] in self._dead_nodes or wid in self.retired:
            return {"version": -1}   # a straggler of a dead node: never routed to again
        with self._lock:
            if wid in self.retired:  # (retired meanwhile: checked again under the lock)
                return {"version": -1}
            self._seen[wid] = time.monotonic()
            self.lost.pop(wid, None)
            joined = False
            if wid in self.draining:         # still heard (its blocks), never routed to
                self.draining[wid] = info
                version = self.core.map_version
            else:
                joined = wid not in self.core.workers
                version = self.core.register_worker(info)
            rules = self.core.rules_version
        if joined:
            self.on_change("join", wid)
        report = report or {}
        if not report.get("full") and not self.blocks.known(wid):
            return {"version": version, "resync": True, "rules": rules,
                    "inc": self.core.incarnation, "moving": self.moving()}
        self.blocks.apply(wid, report)
        with self._lock:
            if wid in self.retired:           # retired while its report was applied
                self.blocks.drop_worker(wid)
                return {"version": -1}
            seq = report.get("seq")
            if isinstance(seq, int):
                self._applied[wid] = max(seq, self._applied.get(wid, 0))
                self._applied_cv.notify_all()
            if isinstance(report.get("by_dataset"), dict):
                self._ds_counts[wid] = report["by_dataset"]
        return {"version": version, "rules": rules, "inc": self.core.incarnation,
                "moving": self.moving()}

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
        for wid in [w for w in self.retired if w not in alive]:
            del self.retired[wid]           # its node is gone: nothing to keep off it
        for nid in sorted(alive - set(self.handles) - set(self.retired)):
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
            info = self.core.workers.get(worker_id) or self.draining.pop(worker_id, None)
            if info is not None:
                self.lost[worker_id] = info
                self.core.remove_worker(worker_id)   # clients stop routing to it
            self.blocks.drop_worker(worker_id)
            self._seen.pop(worker_id, None)
        if info is not None:
            self.on_change("lost", worker_id)

    def drain(self, wid: str) -> None:
        """Take a worker out of the routing at once; it goes on serving its peers (its
        blocks move to their new owners) until `retire`."""
        with self._lock:
            info = self.core.workers.get(wid)
            if info is None:
                return                        # draining already (or gone)
            self.on_change("drain", wid)      # first: never seen draining and unplanned
            self.draining[wid] = info
            self.core.remove_worker(wid)

    def retire(self, wid: str, timeout: float) -> None:
        """A drained worker stops (its memory tier given back) and no worker is made on
        its node again while the node lives."""
        with self._lock:
            info = self.draining.pop(wid, None)
            if info is None:
                return
            self.retired[wid] = info.get("host", "")
            handle = self.handles.pop(wid, None)
            self._seen.pop(wid, None)
        self.blocks.drop_worker(wid)
        if handle is not None:
            try:
                ray.get(handle.release.remote(False), timeout=timeout)
            except Exception as exc:  # noqa: BLE001 - it stops either way
                log.warning("drained worker %s did not stop cleanly: %s", wid, exc)
            try:
                ray.kill(handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        log.info("worker %s drained and retired", wid)

    def ray_draining(self) -> None:
        """Drain the workers of the nodes Ray is draining (its autoscaler asks a node to
        drain before it removes it; `ray drain-node` does too)."""
        try:
            from ray._private import state
            nodes = state.state.get_draining_nodes()
        except Exception as exc:  # noqa: BLE001 - an older Ray, or the GCS is busy
            log.debug("no draining nodes from Ray: %s", exc)
            return
        for nid in nodes:
            if nid in self.core.workers:
                log.info("Ray drains node %s: draining its worker", nid)
                self.drain(nid)

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
                self.ray_draining()
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
