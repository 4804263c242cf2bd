"""The worker: one Ray actor per node, pinned to it, serving blocks over TCP.

A thin shell: it reads the config, claims the tier directories, and composes the rooms,
each with the dependencies it names:

    access.Access    tokens and dataset records, asked of the master
    reads.Reads      the data server's handlers, the read path, fetch threads, mounts
    reports.Reports  block reports and heartbeats to the master, the master's rules
    loads.Loads      the worker's part of `load` jobs, through the read path
    writes.Writes    files written through to the under store (write sessions)
    pending.Pending  files kept in this worker's journal (async-through, must-cache)
    peers.Peers      blocks to and from other workers (the master's moves, misses while
                     blocks move)

Owns: the node's block store (tiering/), the data server (service.py, uvloop), the
master's actor handle (every call to the master is made here, handed to the rooms as
callables), the metrics, and stopping.
Never: serve a read itself (reads.py does), or import the master's code (it speaks to
the master's actor by name).
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import replace

import ray

from .. import names
from ..config import Config
from ..errors import FluidError, InvalidRequest, Unavailable
from ..service import Server, advertised, bind_host as _bind_host, limits_of
from ..tiering import dirs, layout
from ..tiering.store import BlockStore
from .access import Access
from .journal import Journal
from .loads import Loads
from .peers import Peers
from .pending import Pending
from .reads import Reads
from .reports import Reports
from .servers import Servers, count_of
from .writes import OPS as WRITE_OPS, Writes

log = logging.getLogger(__name__)
_MASTER_TIMEOUT = 60.0   # seconds a blocking call to the master may take
_LOOP_TIMEOUT = 30.0     # seconds a Ray call waits for the data server's loop
_FLUSH_TIMEOUT = 25.0    # seconds a stopping worker waits for its uploads (the
                         # master gives a stopping worker 30 s before it kills it)


class Worker:
    def __init__(self, config: dict, node_id: str) -> None:
        cfg = Config.from_dict(config)
        self.config, self.node_id = cfg, node_id
        self._secret = cfg.worker_secret
        self._locks: list[int] = []
        self.labels = {k: str(v) for k, v in
                       ray.get_runtime_context().get_node_labels().items()
                       if not k.startswith("ray.io/")}
        self.resources = sorted(
            r for n in ray.nodes() if n["NodeID"] == node_id for r in n.get("Resources", {})
            if not r.startswith("node:") and r not in ("CPU", "GPU", "memory",
                                                       "object_store_memory"))
        group = cfg.tier_group_access
        tiers = tuple(replace(t, path=dirs.claim_dir(t.path, cfg.cluster_id, self._locks, group,
                                                     cfg.tier_trust_parents))
                      for t in cfg.tiers)
        self._tier_bases = [(t.medium, t.path) for t in cfg.tiers]
        self.store = BlockStore(tiers, cfg.eviction, cfg.promote,
                                file_mode=dirs.file_mode(group)).start()
        self.metrics = _metrics(node_id)
        self._master = ray.get_actor(names.MASTER_ACTOR, namespace=names.RAY_NAMESPACE)
        self.access = Access(self._ask_tokens, self._ask_dataset, cfg.record_ttl,
                             cfg.records_kept, on_forget=self._forget)
        self.reports = Reports(self.store, self._send_report, self._ask_rules,
                               self._per_dataset, self._after_beat, cfg.heartbeat_interval)
        self.reads = Reads(cfg, self.store, self.access, self.reports.owners, node_id,
                           self.labels, self.resources, self.metrics)
        self.loads = Loads(self.reads, self.reports.report_after, cfg.jobs_kept)
        lowest = cfg.tiers[-1]                  # an SSD, where one is configured
        journal = Journal(os.path.join(self.store.paths[-1], "pending"), cfg.block_size,
                          cfg.write_journal or lowest.quota)
        self.pending = Pending(cfg, node_id, journal, self.access, self.reads.mount_of,
                               self._ask_pending)
        self.pending.adopt()                    # a restarted worker's kept files
        self.reads.kept = self.pending.read
        self.writes = Writes(cfg, self.store, self.access, self.reads.mount_of,
                             self._tell_master, self.labels, self.resources, self.pending)
        host = _bind_host(cfg.host)
        self.server = Server(self._handle, host, cfg.worker_port,
                             cfg.max_frame, cfg.write_chunk, name="fluidcache-data",
                             fast=self._fast, limits=limits_of(cfg)).start()
        self.peers = self.reads.peers = Peers(cfg, self.store, lambda: self.server.address,
                                              self._ask_holders, self.reports.report_after)
        self.servers = self._start_servers(host)
        if self.servers is not None:
            self.access.on_tokens = self.servers.push      # a new table reaches them at once
            self.server.call_soon(self.access.refresh())   # tokens for them, from the start
        self.server.call_soon(_started(self.pending.start))
        self.reports.start()

    # -- the data server's handlers: writes to their room, the rest to the read path --
    def _fast(self, req, payload):
        return None if req.op in WRITE_OPS else self.reads.fast(req, payload)

    async def _handle(self, req, payload):
        if req.op in WRITE_OPS:
            return await self.writes.handle(req, payload)
        if payload:
            raise InvalidRequest(f"{req.op} takes no payload")
        return await self.reads.handle(req, payload)

    def _start_servers(self, host: str) -> Servers | None:
        """The serving processes (serve.py), or None when configured without them."""
        count = count_of(self.config.serve_processes)
        if not count:
            return None
        cfg = self.config
        settings = {"host": host, "port": cfg.serve_port, "tier_paths": self.store.paths,
                    "block_size": cfg.block_size, "max_data": cfg.max_data,
                    "max_frame": cfg.max_frame, "node_id": self.node_id,
                    "limits": limits_of(cfg).__dict__}

        def on_report(report: dict) -> None:
            self.server.loop.call_soon_threadsafe(self.reads.served, report)

        servers = Servers(count, settings, on_report,
                          lambda: (self.access.tokens, self.reads.map_version))
        servers.hung_after = cfg.serve_hung_after
        return servers.start()

    # -- the master, as the rooms see it ----------------------------------------------
    async def _ask_tokens(self) -> dict:
        return await _ray_call(self._master.tokens.remote(self._secret))

    async def _ask_dataset(self, ns: str, name: str) -> dict:
        return await _ray_call(self._master.dataset_for_worker.remote(ns, name, self._secret))

    async def _tell_master(self, ns: str, name: str, path: str, uid: str) -> dict:
        """The master lists a file we committed. Its own error (the store's HEAD failed,
        the dataset went) reaches the client as it is; anything else is Unavailable (the
        file is in the store; the next listing shows it)."""
        return await self._ask_master("wrote", f"list {name}/{path}", ns, name, path, uid)

    async def _ask_pending(self, method: str, *args) -> dict:
        return await self._ask_master(f"pending_{method}", f"take kept file {method}", *args)

    async def _ask_master(self, method: str, what: str, *args) -> dict:
        """A call to the master's actor from the loop: its own errors as they are,
        anything else (it is gone, restarting, slow) as Unavailable."""
        try:
            return await asyncio.wait_for(
                _ray_call(getattr(self._master, method).remote(*args, self._secret)),
                _MASTER_TIMEOUT)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, FluidError):
                raise exc.cause from None
            raise Unavailable(f"the master failed to {what}: {exc.cause}") from None
        except (ray.exceptions.RayError, asyncio.TimeoutError) as exc:
            raise Unavailable(f"the master did not {what}: {type(exc).__name__}") from None

    def _send_report(self, report: dict) -> dict:
        return ray.get(self._master.heartbeat.remote(self.info(), report, self._secret),
                       timeout=_MASTER_TIMEOUT)

    def _ask_holders(self, key: str) -> dict:
        return ray.get(self._master.holders_for_worker.remote(key, self.node_id,
                                                              self._secret), timeout=10)

    def _ask_rules(self) -> dict:
        return ray.get(self._master.rules_for_worker.remote(self._secret),
                       timeout=_MASTER_TIMEOUT)

    def _per_dataset(self) -> dict:
        return self.reads.per_dataset()

    def _after_beat(self, reply: dict) -> None:
        if self.metrics is not None:
            counters = self.reads.counters
            try:
                self.metrics.publish(counters, self.reads.by_dataset, self.store.tiers(),
                                     self.store.evictions, counters["short_circuit_bytes"],
                                     dict(self.store.read_bytes))
            except Exception as exc:  # noqa: BLE001 - metrics must never stop heartbeats
                log.debug("metrics: %s", exc)
        self.reads.saw_map_version(reply.get("version", 0))
        self.peers.saw(bool(reply.get("moving")), self.config.heartbeat_interval)
        if reply.get("inc"):
            self.server.loop.call_soon_threadsafe(self.pending.saw_master, reply["inc"])

    def _forget(self, ns: str, name: str) -> None:
        self.reads.forget(ns, name)

    # -- data operations (the master's load, free, pin, ttl, du) -------------------------
    def free(self, keys: list[str], force: bool) -> dict:
        try:                    # staged copies go too (a freed version is never served)
            asyncio.run_coroutine_threadsafe(_started(lambda: self.reads.stage.drop(keys)),
                                             self.server.loop).result(_LOOP_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - the tiers are freed either way
            log.warning("dropping staged blocks: %s", exc)
        freed = n = pinned = 0
        for key in keys:
            got = self.store.free(key, force)
            if got is None:
                pinned += 1
            elif got:
                freed, n = freed + got, n + 1
        return {"blocks": n, "bytes": freed, "pinned": pinned,
                "seq": self.reports.report_after()}

    def on_loop(self, fn, *args):
        """Run `fn(*args)` on the data server's loop (where loads live); its result."""
        async def call():
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(call(), self.server.loop).result(_LOOP_TIMEOUT)

    def release(self, keep_cache: bool = False) -> None:
        """The cluster stops: stop serving and, unless `keep_cache`, give the memory
        tiers back (their blocks and directories are removed; SSD and HDD tiers stay)."""
        try:                # async-through files still waiting go to the store first
            if not asyncio.run_coroutine_threadsafe(
                    self.pending.flush(_FLUSH_TIMEOUT), self.server.loop).result(
                        _FLUSH_TIMEOUT + 5):
                log.warning("stopping with files not uploaded yet: %s; they stay in the "
                            "journal for this worker's next start", self.pending.stats())
        except Exception as exc:  # noqa: BLE001 - stopping goes on
            log.warning("flushing uploads at stop: %s", exc)
        self.pending.stop()
        self.peers.close()
        self.reports.stop()
        self.writes.stop()
        if self.servers is not None:
            self.servers.stop()
        self.server.stop()
        self.store.stop()
        if keep_cache:
            return
        for (medium, base), path in zip(self._tier_bases, self.store.paths, strict=True):
            if medium == "MEM":
                dirs.release(path, base)

    # -- Ray API ---------------------------------------------------------------------
    def info(self) -> dict:
        info = {"id": self.node_id, "node_id": self.node_id, "host": socket.gethostname(),
                "labels": self.labels, "resources": self.resources,
                "address": self.server.address, "machine": layout.machine_id(),
                "tier_paths": self.store.paths, "pid": os.getpid()}
        if self.servers is not None and self.servers.alive:
            shown = advertised(self.servers.settings["host"])
            info["serve"] = f"[{shown}]:{self.servers.port}" if ":" in shown else \
                f"{shown}:{self.servers.port}"
            info["serve_pids"] = self.servers.pids
        return info

    def stats(self) -> dict:
        moves = self.store.moves
        stats = dict(self.reads.counters, **self.writes.counters, **self.pending.stats(),
                     **self.peers.counters,
                     evictions=self.store.evictions,
                     demotions=moves["demote"], promotions=moves["promote"],
                     expirations=moves["expire"],
                     write_failures=self.store.write_failures,
                     corrupt_blocks=self.store.corrupt_blocks,
                     protocol_errors=self.server.protocol_errors + (
                         self.servers.counters()["pe"] if self.servers else 0))
        return {"tiers": self.store.tiers(), "stats": stats,
                "datasets": {o: {"hits": h, "misses": m}
                             for o, (h, m) in list(self.reads.by_dataset.items())}}


async def _started(fn) -> None:
    fn()


def _metrics(node_id: str):
    try:
        from ..metrics import WorkerMetrics
        return WorkerMetrics(node_id)
    except Exception as exc:  # noqa: BLE001 - no metrics agent: serve without metrics
        log.warning("no Ray metrics: %s", exc)
        return None


async def _ray_call(ref):
    """Await a Ray object ref from the server's (non-Ray) event loop."""
    return await asyncio.wrap_future(ref.future())


@ray.remote(num_cpus=0, max_concurrency=4)
class WorkerActor:
    """The Ray face of a Worker. It has no coroutine methods, so Ray runs it as a threaded
    actor; the data server's coroutines run on the server's own loop."""

    def __init__(self, config: dict, node_id: str) -> None:
        self._w = Worker(config, node_id)

    def info(self) -> dict:
        return self._w.info()

    def stats(self) -> dict:
        return self._w.stats()

    def load_start(self, job: str, ns: str, dataset: str, concurrency: int) -> bool:
        self._w.on_loop(self._w.loads.start, job, ns, dataset, concurrency)
        return True

    def load_items(self, job: str, items: list) -> None:
        self._w.on_loop(self._w.loads.feed, job, items)

    def load_progress(self, job: str) -> dict:
        j = self._w.loads.jobs.get(job)
        return {"state": "lost"} if j is None else self._w.on_loop(j.progress)

    def load_cancel(self, job: str) -> None:
        self._w.on_loop(self._w.loads.cancel, job)

    def free(self, keys: list, force: bool = False) -> dict:
        return self._w.free(keys, force)

    def apply_rules(self, rules: dict) -> None:
        self._w.reports.apply_rules(rules)

    def move_in(self, items: list, budget: float = 3600.0) -> dict:
        """The master's move order: pull these blocks from their holders, cache them
        (within `budget` seconds)."""
        return self._w.peers.move_in(items, budget)

    def moving(self, seconds: float) -> None:
        """Blocks move: a miss looks at their holders for `seconds` (and while the
        master's heartbeats say so)."""
        self._w.peers.moving_for(seconds)

    def where(self, keys: list) -> dict:
        return self._w.store.tier_bytes(keys)

    def forget(self, ns: str, name: str) -> None:
        """A dataset was removed: its record goes (asked again, if ever, of the master)."""
        self._w.on_loop(self._w.access.forget, ns, name)

    def pending_drop(self, ids: list) -> None:
        """Kept files removed or replaced at the master: they go from the journal."""
        asyncio.run_coroutine_threadsafe(self._w.pending.drop(ids),
                                         self._w.server.loop).result(_LOOP_TIMEOUT)

    def release(self, keep_cache: bool = False) -> None:
        self._w.release(keep_cache)
