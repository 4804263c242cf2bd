"""The master: a detached, named Ray actor around MasterCore and the rooms it composes.

Serves clients (not Ray drivers) over msgpack/TCP and workers over Ray calls.
Owns: building the rooms with their dependencies (membership, catalog, dataops, rules,
status, listings), the op table (a client op's name -> its method), each request's
authorization and its tenant's share of the request threads (tenants.Gate), and the
journal: replay at start, `_commit` (journal first, then the in-memory state).
Never: serve block bytes, or be asked per read: clients hash a block's owners, ask for a
directory's listing while theirs is stale and for the cluster map every few seconds
(`ClientSettings.map_ttl`); workers heartbeat and ask for a dataset's record at most
every `Config.record_ttl`. Nor import the worker: `spawn` makes one (cluster.py).
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import ray

from ..config import Config
from ..errors import InvalidRequest, Unavailable
from ..service import Server, bind_host, limits_of
from . import tenants
from .blockmap import BlockMap
from .catalog import Catalog
from .core import MasterCore
from .dataops import DataOps
from .journal import Journal, JournalError
from .listings import Listings
from .membership import Membership, Spawn
from .rules import Rules
from .status import Status
from .pending import Pending
from .rebalance import Rebalance
from .writes import Writes

log = logging.getLogger(__name__)
_ADMIN_THREADS = 4      # request threads tenants never get: the admin always has these
_SNAPSHOT_EVERY = 1000  # journal records between snapshots

Op = Callable[[str, dict], dict]        # (namespace, arguments) -> reply


class Master:
    def __init__(self, config: dict, token: str | None = None, spawn: Spawn | None = None,
                 blocks: BlockMap | None = None) -> None:
        """`token`: the `default` namespace's token for a new cluster (random if None);
        `spawn(node_id, config) -> handle`: makes a worker actor on a node (None: this
        master only adopts workers that exist); `blocks`: the block map (a fake in tests)."""
        self.config = cfg = Config.from_dict(config)
        self.core = MasterCore(incarnation=secrets.token_hex(4),
                               max_listed=cfg.listing_cache_entries)
        self._lock = threading.RLock()
        self.blocks = blocks if blocks is not None else BlockMap()  # soft: rebuilt from reports
        self.listings = Listings(self.core, self._lock, cfg.sync_interval,
                                 cfg.max_dir_entries, cfg.listing_keep)
        self.members = Membership(self.core, self.blocks, self._lock, cfg, spawn,
                                  self._every_round)
        self.dataops = DataOps(self.core, self._lock, self.blocks, self.listings,
                               self.members, cfg)
        self.rules = Rules(self.core, self._lock, self.listings, self.members, cfg,
                           self._commit, self.dataops.files)
        self.catalog = Catalog(self.core, self._lock, self.listings, self.blocks, cfg,
                               self._commit, self.dataops.free_owner, self._forget_everywhere)
        self.writes = Writes(self.core, self._lock, self.listings, cfg,
                             self.dataops.free_keys)
        self.pending = Pending(self.core, self._lock, self.listings, self.writes,
                               self._drop_kept)
        self.writes.pending = self.listings.overlay = self.pending
        self.status = Status(self.core, self._lock, self.blocks, self.listings, self.members,
                             cfg, self._about, self.dataops.job_count)
        self.status.uploads = self.pending.totals
        self.rebalance = Rebalance(self.core, self._lock, self.blocks, self.members, cfg,
                                   self.pending.held_by)
        self.pending.draining = lambda: set(self.members.draining)
        self.status.rebalance = self.rebalance.status
        self.ops = self._op_table()
        self._pool = ThreadPoolExecutor(cfg.master_threads, thread_name_prefix="fc-master")
        self._gate = tenants.Gate(cfg.tenant_requests, cfg.master_threads - _ADMIN_THREADS)
        self.journal = Journal(cfg.journal_dir) if cfg.journal_dir else None
        restarted = self._replay()
        if not self.core.cluster_id:
            self._commit({"op": "cluster", "id": secrets.token_hex(8)})
        if not self.core.worker_secret:
            self._commit({"op": "worker_secret", "secret": secrets.token_urlsafe(32)})
        if "default" not in self.core.tokens:
            self._commit({"op": "namespace", "ns": "default",
                          "token": token or secrets.token_urlsafe(32)})
        self.server = self._serve()
        if restarted:   # a master restarted by Ray: find the workers again, keep them going
            self.members.start()

    def _forget_everywhere(self, ns: str, name: str) -> None:
        """Every worker drops its record of a removed dataset (one that does not answer
        drops it within its record_ttl)."""
        with self._lock:
            ids = [w["id"] for w in self.core.cluster_map()["workers"]]
        self.members.call(ids, "forget", ns, name, timeout=10)
        self.pending.forget(ns, name)

    def _drop_kept(self, holder: str, ids: list[str]) -> None:
        """Worker `holder` drops these kept files (not waited for: one that does not
        hear it drops them when their upload asks, or when their TTL ends)."""
        handle = self.members.handle(holder)
        if handle is not None:
            handle.pending_drop.remote(ids)

    def _op_table(self) -> dict[str, Op]:
        """Every client op, by the name on the wire (`ping` is answered before it)."""
        c, d, r, s, w = self.catalog, self.dataops, self.rules, self.status, self.writes
        return {
            "cluster": s.op_cluster, "status": s.op_status,
            "namespace_create": c.op_namespace_create, "namespace_grant": c.op_namespace_grant,
            "namespace_show": c.op_namespace_show, "namespaces": c.op_namespaces,
            "datasets": c.op_datasets, "dataset_show": c.op_dataset_show,
            "dataset_create": c.op_dataset_create, "dataset_rm": c.op_dataset_rm,
            "ls": c.op_ls, "info": c.op_info, "epoch": c.op_epoch,
            "metadata_load": d.op_metadata_load, "load": d.op_load,
            "load_status": d.op_load_status, "load_cancel": d.op_load_cancel,
            "free": d.op_free, "du": d.op_du, "locate": d.op_locate,
            "pin": r.op_pin, "unpin": r.op_unpin, "ttl": r.op_ttl, "rules": r.op_rules,
            "rm": w.op_rm, "copy": w.op_copy, "mkdir": w.op_mkdir, "sync": w.op_sync,
            "drain": self.rebalance.op_drain,
        }

    def _replay(self) -> bool:
        """The journal's snapshot and records into the core; True if there were any."""
        if self.journal is None:
            return False
        snapshot, records = self.journal.load()
        self.core.restore(snapshot)
        for no, rec in enumerate(records):
            try:
                self.core.apply(rec)
            except Exception as exc:  # noqa: BLE001 - one bad record never stops replay
                log.error("journal record %d (%s) skipped: %s", no,
                          str(rec.get("op") if isinstance(rec, dict) else rec)[:40], exc)
        return snapshot is not None or bool(records)

    def _serve(self) -> Server:
        """Bind the configured port, else the port this master had before a restart (so
        clients holding the old address reconnect), else any free port."""
        cfg = self.config
        port_file = os.path.join(cfg.journal_dir, "master.port") if cfg.journal_dir else None
        ports = [cfg.master_port] if cfg.master_port else []
        if not ports and port_file and os.path.exists(port_file):
            ports.append(int(open(port_file).read().strip() or 0))
        ports.append(0)
        for port in ports:
            try:
                server = Server(self._handle, bind_host(cfg.host), port, cfg.max_frame,
                                name="fluidcache-master", limits=limits_of(cfg)).start()
                break
            except OSError:
                if port == 0:
                    raise
        if port_file:
            with open(port_file, "w") as f:
                f.write(str(server.port))
        return server

    def _commit(self, rec: dict) -> None:
        """Apply a durable change: journal first (fsync), then the in-memory state. If the
        journal cannot be written, the change is refused and nothing changes."""
        with self._lock:
            if self.journal is not None:
                try:
                    self.journal.append(rec)
                except JournalError as exc:
                    raise Unavailable(f"the master cannot record the change: {exc}") from None
                if self.journal.appended >= _SNAPSHOT_EVERY:
                    self.core.apply(rec)
                    try:
                        self.journal.snapshot(self.core.state())
                    except OSError as exc:   # the change is durable in the log already
                        log.error("journal snapshot failed (tried again later): %s", exc)
                    return
            self.core.apply(rec)

    def _every_round(self, now: float) -> None:
        """What the membership round does besides membership."""
        with self._lock:
            self.core.prune(now)             # expired listings go (digests stay)
        self.dataops.prune_jobs(now)
        self.status.publish_metrics()

    def _about(self) -> dict:
        return {"address": self.address(), "pid": os.getpid(),
                "node_id": ray.get_runtime_context().get_node_id(),
                "connections": self.server.connections}

    # -- Ray API (the CLI; MasterActor) --------------------------------------------------
    def address(self) -> str:
        return self.server.address

    def token(self, ns: str = "default") -> str:
        with self._lock:
            return self.core.tokens[ns]

    def tokens(self) -> dict:
        with self._lock:
            return dict(self.core.tokens)

    def shutdown(self, keep_cache: bool = False) -> None:
        """Stop the cluster: every worker stops serving and gives its memory tier back
        (unless `keep_cache`), then the workers and the server go."""
        self.rebalance.stop()
        self.members.stop(keep_cache)
        self.server.stop()

    # -- client endpoint ----------------------------------------------------------------
    async def _handle(self, req, payload):
        if req.op == "ping":
            return {"pong": True}, None
        fn = self.ops.get(req.op)
        if fn is None:
            raise InvalidRequest(f"unknown master operation {req.op!r}")
        ns = self.core.authorize(req.namespace, req.token)   # dict reads: no lock needed
        self._gate.enter(ns)                  # a tenant's share of the master's threads
        try:
            work = self._pool.submit(fn, ns, req.args)
        except BaseException:
            self._gate.leave(ns)
            raise
        # the share is given back when the thread is done, not when the request gives up
        work.add_done_callback(lambda _w: self._gate.leave(ns))
        return await asyncio.wrap_future(work), None


@ray.remote(num_cpus=0, max_concurrency=16)
class MasterActor:
    """The Ray face of the Master (no coroutine methods: Ray runs it as a threaded actor).

    Trust: whoever can run a Ray driver or job in this Ray cluster is the cluster's
    administrator (Ray lets them run code on every node); `address` and `token` serve
    them (discovery inside a Ray job). The methods workers call (`heartbeat`, `tokens`,
    `dataset_for_worker`, `rules_for_worker`, `wrote`) also want the cluster's worker secret,
    which the master hands only to the workers it creates: a forged heartbeat cannot
    register an address that clients would then send their tokens to.
    `spawn`: how a worker actor is made (cluster.spawn_worker); Ray passes it again when
    it restarts the master."""

    def __init__(self, config: dict, token: str | None = None,
                 spawn: Spawn | None = None) -> None:
        self._m = Master(config, token, spawn)

    def address(self) -> str:
        return self._m.address()

    def token(self, ns: str = "default") -> str:
        return self._m.token(ns)

    def deploy(self) -> list[str]:
        return self._m.members.deploy()

    def heartbeat(self, info: dict, report: dict | None = None, secret: str = "") -> dict:
        self._m.members.check_secret(secret)
        return self._m.members.heartbeat(info, report)

    def dataset_for_worker(self, ns: str, name: str, secret: str = "") -> dict:
        self._m.members.check_secret(secret)
        return self._m.catalog.dataset_for_worker(ns, name)

    def wrote(self, ns: str, name: str, path: str, uid: str, secret: str = "") -> dict:
        self._m.members.check_secret(secret)
        return self._m.writes.wrote(ns, name, path, uid)

    def pending_add(self, rec: dict, holder: str, exclusive: bool, again: bool,
                    secret: str = "") -> dict:
        self._m.members.check_secret(secret)
        return self._m.pending.add(rec, holder, exclusive, again)

    def pending_begin(self, ns: str, name: str, uid: str, path: str, fid: str,
                      secret: str = "") -> dict:
        self._m.members.check_secret(secret)
        return self._m.pending.begin(ns, name, uid, path, fid)

    def pending_done(self, ns: str, name: str, uid: str, path: str, fid: str,
                     secret: str = "") -> dict:
        self._m.members.check_secret(secret)
        return self._m.pending.done(ns, name, uid, path, fid)

    def pending_release(self, ns: str, name: str, uid: str, path: str, fid: str,
                        secret: str = "") -> dict:
        self._m.members.check_secret(secret)
        return self._m.pending.release(ns, name, uid, path, fid)

    def pending_gone(self, ns: str, name: str, uid: str, path: str, fid: str,
                     secret: str = "") -> dict:
        self._m.members.check_secret(secret)
        return self._m.pending.gone(ns, name, uid, path, fid)

    def tokens(self, secret: str = "") -> dict:
        self._m.members.check_secret(secret)
        return self._m.tokens()

    def holders_for_worker(self, key: str, asker: str = "", secret: str = "") -> dict:
        """Who holds a block, and whether the asking worker owns it (a worker's miss
        while blocks move: it reads the block from its holder, not from the store)."""
        self._m.members.check_secret(secret)
        return self._m.rebalance.holders(key, asker)

    def rules_for_worker(self, secret: str = "") -> dict:
        self._m.members.check_secret(secret)
        return self._m.rules.rules_for_worker()

    def shutdown(self, keep_cache: bool = False) -> None:
        self._m.shutdown(keep_cache)
