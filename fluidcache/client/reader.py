"""The client's read path: cluster map, routing, short-circuit, failover, hit reports.

For each block of a read: if a worker on this machine holds it, read its tier file
directly (no RPC) and verify its checksum; else ask its owners by rendezvous rank over
TCP; when no owner answers, ask any other live worker, which reads it through from
the under store. Every process (after a fork too) opens its own sockets and threads.
Never: see under-store URLs or credentials.
"""
from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time

from .. import blocks, placement
from ..errors import FluidError, Unavailable
from ..tiering import layout
from ..wire import BlockRead
from .conn import Pool
from .discovery import Endpoint

log = logging.getLogger(__name__)
_MAP_TTL = 10.0
_FLUSH_EVERY = 0.5
_FLUSH_BATCH = 512


class ClusterClient:
    def __init__(self, endpoint: Endpoint, connect_timeout: float = 5.0,
                 request_timeout: float = 60.0, short_circuit: bool = True,
                 master_retry: float = 30.0, failover_timeout: float = 60.0) -> None:
        self.endpoint = endpoint
        self.master_retry = master_retry
        self.failover_timeout = failover_timeout
        self.short_circuit = short_circuit
        self.pool = Pool(connect_timeout, request_timeout)
        self._map: dict | None = None
        self._map_at = 0.0
        self._map_stale = False
        self._local_id: str | None = None
        self._local: list[tuple[str, list[str]]] = []     # (worker address, tier paths)
        self._lock = threading.Lock()
        self._pending: dict[str, list[str]] = {}
        self._flusher: threading.Thread | None = None
        self._wake = threading.Event()
        self._pid = os.getpid()
        self.counters = {"short_circuit": 0, "remote": 0, "failover": 0, "stale": 0,
                         "master_calls": 0, "waits": 0}
        self._datasets: dict[str, tuple[float, dict]] = {}
        atexit.register(self.flush)

    # -- master ------------------------------------------------------------------------
    def master(self, op: str, args: dict | None = None):
        """One master call. While the master is unreachable (restarting: Ray brings it
        back on the same port) retry with backoff for up to `master_retry` seconds."""
        deadline = time.monotonic() + self.master_retry
        delay = 0.1
        while True:
            try:
                self.counters["master_calls"] += 1
                result, _ = self.pool.call(self.endpoint.master, op, args,
                                           self.endpoint.namespace, self.endpoint.token)
                return result
            except Unavailable:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)     # backoff before the next attempt to reach the master
                delay = min(2.0, delay * 2)

    def cluster(self, refresh: bool = False) -> dict:
        now = time.monotonic()
        if refresh or self._map is None or self._map_stale or now - self._map_at > _MAP_TTL:
            m = self.master("cluster")
            me = layout.machine_id()
            self._local = [(w["address"], w["tier_paths"]) for w in m["workers"]
                           if w.get("machine") == me]
            self._local_id = _local_worker(m["workers"], me)
            self._map, self._map_at, self._map_stale = m, now, False
        return self._map

    # -- blocks ------------------------------------------------------------------------
    def read(self, entry: dict, start: int, end: int) -> bytes:
        """Bytes [start, end) of a listed file entry."""
        m = self.cluster()
        pieces = blocks.pieces(entry["size"], m["block_size"], start, end)
        if len(pieces) == 1:
            return bytes(self.piece(entry, pieces[0]))
        out = bytearray(sum(p.length for p in pieces))
        self.read_into(entry, start, memoryview(out))
        return bytes(out)

    def read_into(self, entry: dict, start: int, out: memoryview) -> int:
        """Fill `out` with the file's bytes from `start` (fewer at the end of the file);
        returns how many. Whole local blocks are read straight into `out` and verified
        there: no intermediate copy at all."""
        bs = self.cluster()["block_size"]
        pos = 0
        for p in blocks.pieces(entry["size"], bs, start, start + len(out)):
            dst = out[pos:pos + p.length]
            whole = p.offset == 0 and p.length == blocks.block_length(entry["size"], bs, p.index)
            if not (whole and self.short_circuit and
                    self._local_into(blocks.block_key(entry["fid"], p.index, bs), dst)):
                dst[:] = self.piece(entry, p)
            pos += p.length
        return pos

    def block(self, entry: dict, index: int) -> memoryview | bytes:
        """One whole block (what file objects keep between small reads)."""
        return self.piece(entry, blocks.Piece(index, 0, -1))

    def piece(self, entry: dict, piece: blocks.Piece) -> memoryview | bytes:
        m = self.cluster()
        bs = m["block_size"]
        key = blocks.block_key(entry["fid"], piece.index, bs)
        if self.short_circuit:
            data = self._local_block(key)
            if data is not None and len(data) != blocks.block_length(entry["size"], bs,
                                                                     piece.index):
                data = None    # not this block of this version: let a worker sort it out
            if data is not None:
                end = len(data) if piece.length < 0 else piece.offset + piece.length
                return data[piece.offset:end]
        dataset, _, path = entry["name"].partition("/")
        req = BlockRead(dataset, path, entry["version"], entry["size"], piece.index,
                        piece.offset, piece.length).to_args()
        req["f"] = entry["fid"]
        req["bs"] = bs
        return self._remote(key, req, m)

    def _local_into(self, key: str, dst: memoryview) -> bool:
        for address, paths in self._local:
            for p in paths:
                try:
                    found = layout.read_block_into(p, key, dst)
                except (layout.CorruptBlock, OSError) as exc:
                    log.warning("short-circuit: block %s in %s: %s", key, p, exc)
                    continue
                if found:
                    self.counters["short_circuit"] += 1
                    self._report_hit(address, key)
                    return True
        return False

    def _local_block(self, key: str):
        for address, paths in self._local:
            for p in paths:
                try:
                    data = layout.read_block(p, key)
                except layout.CorruptBlock:
                    data = None   # the worker drops it when it next reads it; go remote
                    log.warning("short-circuit: block %s in %s is corrupt", key, p)
                    continue
                if data is not None:
                    self.counters["short_circuit"] += 1
                    self._report_hit(address, key)
                    return data
        return None

    def dataset(self, name: str) -> dict:
        """A dataset's public record (replicas, selector), cached like the cluster map."""
        now = time.monotonic()
        hit = self._datasets.get(name)
        if hit is None or hit[0] < now:
            hit = self._datasets[name] = (now + _MAP_TTL,
                                          self.master("dataset_show", {"name": name}))
        return hit[1]

    def _remote(self, key: str, req: dict, m: dict):
        ds = self.dataset(req["ds"])
        replicas = ds.get("replicas", 1)
        last: Exception | None = None
        deadline, delay = time.monotonic() + self.failover_timeout, 0.1
        while True:
            local = self._local_id if ds.get("routing") == "local-first" else None
            order = placement.route(key, m["workers"], ds.get("selector"), local)
            by_id = {w["id"]: w for w in m["workers"]}
            for rank, wid in enumerate(order):
                try:
                    result, payload = self.pool.call(by_id[wid]["address"], "read", req,
                                                     self.endpoint.namespace,
                                                     self.endpoint.token)
                except Unavailable as exc:
                    last = exc
                    continue
                if result.get("mv", 0) > m["version"]:
                    self._map_stale = True  # membership moved: refresh before the next read
                self.counters["remote"] += 1
                if rank >= replicas:
                    self.counters["failover"] += 1
                return payload
            # no worker answered: membership may have moved (a worker restarted by Ray
            # comes back at a new address); wait for the cluster, up to failover_timeout
            if time.monotonic() + delay > deadline:
                raise Unavailable(f"no worker could serve block {key} within "
                                  f"{self.failover_timeout:g}s: {last}")
            time.sleep(delay)     # backoff while the cluster recovers
            delay = min(2.0, delay * 2)
            self.counters["waits"] += 1
            try:
                m = self.cluster(refresh=True)
            except Unavailable as exc:
                last = exc

    # -- short-circuit hit reports (batched, cheap) ------------------------------------
    def _report_hit(self, address: str, key: str) -> None:
        with self._lock:
            if self._pid != os.getpid():    # forked: start over with our own thread
                self._pid, self._pending, self._flusher = os.getpid(), {}, None
                self._wake = threading.Event()
            self._pending.setdefault(address, []).append(key)
            n = sum(len(v) for v in self._pending.values())
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_loop, daemon=True,
                                                 name="fluidcache-hits")
                self._flusher.start()
        if n >= _FLUSH_BATCH:
            self._wake.set()

    def _flush_loop(self) -> None:
        while True:
            self._wake.wait(_FLUSH_EVERY)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Send pending short-circuit hits to their workers now."""
        with self._lock:
            if self._pid != os.getpid():
                return
            pending, self._pending = self._pending, {}
        for address, keys in pending.items():
            try:
                self.pool.call(address, "touch", {"keys": keys},
                               self.endpoint.namespace, self.endpoint.token)
            except FluidError as exc:   # hits are advisory: never fail a read for them
                log.debug("could not report %d hits to %s: %s", len(keys), address, exc)


def _local_worker(workers: list[dict], machine: str) -> str | None:
    """The worker of this node: inside a Ray task or actor, the one on its Ray node;
    elsewhere the only worker on this machine (None when there are several)."""
    ray = sys.modules.get("ray")      # never import Ray just to ask
    if ray is not None and ray.is_initialized():
        node = ray.get_runtime_context().get_node_id()
        for w in workers:
            if w["node_id"] == node:
                return w["id"]
    mine = [w["id"] for w in workers if w.get("machine") == machine]
    return mine[0] if len(mine) == 1 else None


__all__ = ["ClusterClient"]
