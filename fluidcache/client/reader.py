"""The client's read path: cluster map, routing, short-circuit, failover, hit reports.

For each block of a read: if a worker on this machine holds it, read its tier file
directly (no RPC) and verify its checksum; else ask its owners by rendezvous rank over
TCP; when no owner answers, ask any other live worker, which reads it through from
the under store. Every process (after a fork too) opens its own sockets and threads.
Never: see under-store URLs or credentials.
"""
from __future__ import annotations

import atexit
import collections
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .. import blocks, paging, placement
from ..errors import FluidError, StaleVersion, Unavailable
from ..tiering import layout
from ..wire import BlockRead
from .conn import FORKS, Pool
from .discovery import Endpoint

log = logging.getLogger(__name__)
_MAP_TTL = 10.0
_FLUSH_EVERY = 0.5
_FLUSH_BATCH = 512
_FANOUT = 8          # blocks of one large read fetched at once
_PENDING_MAX = 65536  # short-circuit hits queued for reporting, at most
READAHEAD_BUDGET = 256 * 1024 * 1024   # bytes all open files of a process read ahead
_TOUCH_CHUNK = 4096   # keys per touch message (well under a frame)


class Budget:
    """Bytes shared by many holders (all open files' readahead): `take` or go without."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used = max(0, self.used - n)


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
        self._local_tiers: list[tuple[str, list[str]]] = []   # (worker address, tier paths)
        self._lock = threading.Lock()
        # hits waiting to be reported: advisory, so bounded (the oldest are dropped)
        self._pending: collections.deque[tuple[str, str]] = collections.deque(
            maxlen=_PENDING_MAX)
        self._flusher: threading.Thread | None = None
        self._wake = threading.Event()
        self._gen = FORKS[0]
        self._threads: ThreadPoolExecutor | None = None
        self.counters = {"short_circuit": 0, "remote": 0, "failover": 0, "stale": 0,
                         "master_calls": 0, "waits": 0, "readahead": 0, "direct": 0,
                         "prefetch": 0}
        # set by a filesystem given under-store options: req -> bytes, from the store
        self.direct: Callable[[dict], bytes] | None = None
        self._datasets: dict[str, tuple[float, dict]] = {}
        self.readahead = Budget(READAHEAD_BUDGET)
        _LIVE.add(self)           # flushed at exit; nothing here keeps the client alive
        self._finalizer = weakref.finalize(self, _release, self.pool, self._wake)

    def close(self) -> None:
        """Report pending hits, close the sockets and stop the threads now (a client
        that is dropped does the same when it is collected)."""
        self.flush()
        self._finalizer()
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)

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

    def paged(self, op: str, args: dict | None = None, field: str = "items") -> list:
        """Every item of a paged master reply (paging.py), page after page."""
        return list(paging.pages(lambda after: self.master(op, {**(args or {}),
                                                               "after": after}), field))

    def cluster(self, refresh: bool = False) -> dict:
        now = time.monotonic()
        if refresh or self._map is None or self._map_stale or now - self._map_at > _MAP_TTL:
            m = self.master("cluster")
            after = m.pop("next", None)
            while after is not None:       # a large cluster's map comes in pages
                more = self.master("cluster", {"after": after})
                m["workers"] += more["workers"]
                after = more.get("next")
            me = layout.machine_id()
            self._local_tiers = [(w["address"], w["tier_paths"]) for w in m["workers"]
                           if w.get("machine") == me]
            self._local_id = _local_worker(m["workers"], me)
            self._map, self._map_at, self._map_stale = m, now, False
        return self._map

    # -- blocks ------------------------------------------------------------------------
    def read(self, entry: dict, start: int, end: int) -> bytes:
        """Bytes [start, end) of a listed file entry."""
        m = self.cluster()
        bs = m["block_size"]
        index = start // bs
        if end <= (index + 1) * bs:           # one block: most files of a training set
            return bytes(self.piece(entry, blocks.Piece(index, start - index * bs,
                                                        end - start), m))
        pieces = blocks.pieces(entry["size"], bs, start, end)
        out = bytearray(sum(p.length for p in pieces))
        self.read_into(entry, start, memoryview(out))
        return bytes(out)

    def read_into(self, entry: dict, start: int, out: memoryview) -> int:
        """Fill `out` with the file's bytes from `start` (fewer at the end of the file);
        returns how many. Whole local blocks are read straight into `out` and verified
        there; the other blocks come from their workers concurrently, each received
        straight into its place in `out`."""
        m = self.cluster()
        bs = m["block_size"]
        pos, remote = 0, []
        for p in blocks.pieces(entry["size"], bs, start, start + len(out)):
            dst = out[pos:pos + p.length]
            whole = p.offset == 0 and p.length == blocks.block_length(entry["size"], bs, p.index)
            if not (whole and self.short_circuit and
                    self._local_into(blocks.block_key(entry["fid"], p.index, bs), dst,
                                     (entry["fid"], p.index))):
                remote.append((p, dst))
            pos += p.length

        def fetch(job) -> None:
            p, dst = job
            data = self.piece(entry, p, m, into=dst)
            if data is not dst:
                if len(data) != len(dst):
                    raise StaleVersion(f"{entry['name']}: block {p.index} is not the listed "
                                       "size; list it again")
                dst[:] = data

        if len(remote) > 1:
            for _ in self.executor().map(fetch, remote):
                pass
        elif remote:
            fetch(remote[0])
        return pos

    def executor(self) -> ThreadPoolExecutor:
        """Threads that fetch the blocks of one large read at once (created on first use,
        in this process)."""
        if self._threads is None:
            with self._lock:
                if self._threads is None:
                    self._threads = ThreadPoolExecutor(_FANOUT, thread_name_prefix="fc-read")
        return self._threads

    def block(self, entry: dict, index: int) -> memoryview | bytes:
        """One whole block (what file objects keep between small reads)."""
        return self.piece(entry, blocks.Piece(index, 0, -1))

    def piece(self, entry: dict, piece: blocks.Piece, m: dict | None = None,
              into: memoryview | None = None) -> memoryview | bytes:
        """Bytes of one piece of a block: from a local tier file, else from a worker
        (received straight into `into` when given and returned as it)."""
        m = m or self.cluster()
        bs = m["block_size"]
        key = blocks.block_key(entry["fid"], piece.index, bs)
        if self.short_circuit:
            length = blocks.block_length(entry["size"], bs, piece.index)
            data = self._local_block(key, length, (entry["fid"], piece.index))
            if data is not None:
                if piece.offset == 0 and piece.length in (-1, length):
                    return data                     # the bytes as read: no copy
                end = length if piece.length < 0 else piece.offset + piece.length
                return data[piece.offset:end]
        req = self._request(entry, piece.index, piece.offset, piece.length, bs)
        return self._remote(key, req, m, into)

    def prefetch(self, entry: dict, index: int) -> None:
        """Ask a block's owner to fetch it into its tier now (a readahead hint for large
        sequential reads), in the background; nothing if it is on this machine."""
        m = self.cluster()
        bs = m["block_size"]
        key = blocks.block_key(entry["fid"], index, bs)
        length = blocks.block_length(entry["size"], bs, index)
        if self.short_circuit and any(os.path.exists(layout.block_path(p, key))
                                      for _, paths in self._local_tiers for p in paths):
            return
        req = self._request(entry, index, 0, length, bs)
        order = self._route(key, self.dataset(req["ds"]), m)
        if not order:
            return
        address = next(w["address"] for w in m["workers"] if w["id"] == order[0])
        self.counters["prefetch"] += 1

        def hint() -> None:
            try:
                self.pool.call(address, "prefetch", req, self.endpoint.namespace,
                               self.endpoint.token)
            except FluidError:
                pass           # a hint: the read itself fails over if it must
        self.executor().submit(hint)

    @staticmethod
    def _request(entry: dict, index: int, offset: int, length: int, bs: int) -> dict:
        dataset, _, path = entry["name"].partition("/")
        return BlockRead(dataset, path, entry["version"], entry["size"], index, offset,
                         length, entry["fid"], bs).to_args()

    def _route(self, key: str, ds: dict, m: dict) -> list[str]:
        local = self._local_id if ds.get("routing") == "local-first" else None
        return placement.route(key, m["workers"], ds.get("selector"), local)

    def _local(self, key: str, read):
        """`read(tier dir)` over this machine's workers' tiers: the first answer that is
        not None, counted and reported as a hit; a corrupt or unreadable file is skipped
        (the worker drops a corrupt block when it next reads it)."""
        for address, paths in self._local_tiers:
            for p in paths:
                try:
                    found = read(p)
                except (layout.CorruptBlock, OSError) as exc:
                    log.warning("short-circuit: block %s in %s: %s", key, p, exc)
                    continue
                if found is not None:
                    self.counters["short_circuit"] += 1
                    self._report_hit(address, key)
                    return found
        return None

    def _local_into(self, key: str, dst: memoryview, expect: tuple[str, int]) -> bool:
        """Read a whole local block into `dst`; its trailer must name the file and index
        we asked for (a block planted under the key fails)."""
        return self._local(key, lambda p: layout.read_block_into(p, key, dst, expect)
                           or None) is not None

    def _local_block(self, key: str, length: int, expect: tuple[str, int]) -> bytes | None:
        return self._local(key, lambda p: layout.read_exact(p, key, length, expect))

    def dataset(self, name: str) -> dict:
        """A dataset's public record (replicas, selector), cached like the cluster map."""
        now = time.monotonic()
        hit = self._datasets.get(name)
        if hit is None or hit[0] < now:
            hit = self._datasets[name] = (now + _MAP_TTL,
                                          self.master("dataset_show", {"name": name}))
        return hit[1]

    def _remote(self, key: str, req: dict, m: dict, into: memoryview | None = None):
        ds = self.dataset(req["ds"])
        replicas = ds.get("replicas", 1)
        last: Exception | None = None
        deadline, delay = time.monotonic() + self.failover_timeout, 0.1
        while True:
            order = self._route(key, ds, m)
            by_id = {w["id"]: w for w in m["workers"]}
            for rank, wid in enumerate(order):
                try:
                    result, payload = self.pool.call(by_id[wid]["address"], "read", req,
                                                     self.endpoint.namespace,
                                                     self.endpoint.token, into=into)
                except Unavailable as exc:
                    last = exc
                    continue
                if result.get("mv", 0) > m["version"]:
                    self._map_stale = True  # membership moved: refresh before the next read
                self.counters["remote"] += 1
                if rank >= replicas:
                    self.counters["failover"] += 1
                return payload
            if self.direct is not None:
                # no worker answered and the user gave us under-store options of our own:
                # read the under store directly (never with the cluster's credentials)
                self.counters["direct"] += 1
                return self.direct(req)
            # no worker answered: membership may have moved (a worker restarted by Ray
            # comes back at a new address); wait for the cluster, up to failover_timeout
            if time.monotonic() + delay > deadline:
                raise Unavailable(f"fluid://{req['ds']}/{req['p']} (block {req['b']}): no "
                                  f"worker could serve it within {self.failover_timeout:g}s "
                                  f"(the under store may be stalled or down): {last}")
            time.sleep(delay)     # backoff while the cluster recovers
            delay = min(2.0, delay * 2)
            self.counters["waits"] += 1
            try:
                m = self.cluster(refresh=True)
            except Unavailable as exc:
                last = exc

    # -- short-circuit hit reports (batched, cheap) ------------------------------------
    def _report_hit(self, address: str, key: str) -> None:
        """Queue a short-circuit hit for its worker (deque appends need no lock). One
        client lives in one process: the filesystem makes a new one after a fork."""
        self._pending.append((address, key))
        if self._flusher is None:
            with self._lock:
                if self._flusher is None:
                    self._flusher = threading.Thread(
                        target=_flush_loop, args=(weakref.ref(self), self._wake),
                        daemon=True, name="fluidcache-hits")
                    self._flusher.start()
        if len(self._pending) >= _FLUSH_BATCH:
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
            for i in range(0, len(keys), _TOUCH_CHUNK):
                try:
                    self.pool.call(address, "touch", {"keys": keys[i:i + _TOUCH_CHUNK]},
                                   self.endpoint.namespace, self.endpoint.token)
                except FluidError as exc:   # hits are advisory: never fail a read for them
                    log.debug("could not report %d hits to %s: %s", len(keys), address, exc)
                    break


_LIVE: "weakref.WeakSet[ClusterClient]" = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    for client in list(_LIVE):
        client.flush()


def _release(pool: Pool, wake: threading.Event) -> None:
    pool.close()
    wake.set()


def _flush_loop(ref, wake: threading.Event) -> None:
    """Report hits every interval while the client lives (a weak reference: the thread
    never keeps a dropped client alive, and ends with it)."""
    while True:
        wake.wait(_FLUSH_EVERY)
        wake.clear()
        client = ref()
        if client is None or client._finalizer.alive is False:
            return
        client.flush()
        del client


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
