"""The master: a detached, named Ray actor around MasterCore.

Serves clients (who are not Ray drivers) over msgpack/TCP and workers over Ray calls.
Owns: the listing I/O against the under stores, deploying one worker per alive node,
collecting worker stats for `status`.
Never: sit on the data path; a cached read never calls the master.
"""
from __future__ import annotations

import asyncio
import bisect
import hmac
import logging
import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .. import names, paging, placement
from ..config import Config
from ..errors import AccessDenied, AlreadyExists, InvalidRequest, NotFound, Unavailable
from ..service import Server, bind_host as _bind_host, limits_of
from ..understore import Mount
from .blockmap import BlockMap
from .core import MasterCore
from .dataops import DataOps, worker_handle
from .journal import Journal, JournalError
from .listings import PAGE, Listings
from . import tenants
from ..dataset import Dataset, MountSpec, check_name, normalize

log = logging.getLogger(__name__)
_THREADS = 16        # master request threads; 4 of them are always the admin's


class Master(DataOps):
    def __init__(self, config: dict, token: str | None = None) -> None:
        self.config = Config.from_dict(config)
        self.core = MasterCore(incarnation=secrets.token_hex(4),
                               max_listed=self.config.listing_cache_entries)
        self._lock = threading.RLock()
        self.listings = Listings(self.core, self._lock, self.config.sync_interval,
                                 self.config.max_dir_entries)
        self._handles: dict[str, object] = {}
        self._seen: dict[str, float] = {}          # worker id -> last heartbeat (monotonic)
        self._lost: dict[str, dict] = {}           # worker id -> its last info
        self._dead_nodes: set[str] = set()         # Ray nodes seen dead
        self.blocks = BlockMap()                   # soft state: rebuilt from reports
        self._pool = ThreadPoolExecutor(_THREADS, thread_name_prefix="fc-master")
        self._gate = tenants.Gate(self.config.tenant_requests, _THREADS - 4)
        self._init_dataops()
        self.journal = None
        restarted = False
        if self.config.journal_dir:
            self.journal = Journal(self.config.journal_dir)
            snapshot, records = self.journal.load()
            self.core.restore(snapshot)
            for no, rec in enumerate(records):
                try:
                    self.core.apply(rec)
                except Exception as exc:  # noqa: BLE001 - one bad record never stops replay
                    log.error("journal record %d (%s) skipped: %s", no,
                              str(rec.get("op") if isinstance(rec, dict) else rec)[:40], exc)
            restarted = snapshot is not None or bool(records)
        if not self.core.cluster_id:
            self._commit({"op": "cluster", "id": secrets.token_hex(8)})
        if not self.core.worker_secret:
            self._commit({"op": "worker_secret", "secret": secrets.token_urlsafe(32)})
        if "default" not in self.core.tokens:
            self._commit({"op": "namespace", "ns": "default",
                          "token": token or secrets.token_urlsafe(32)})
        self.server = self._serve()
        self._stop = threading.Event()
        self._membership: threading.Thread | None = None
        if restarted:   # a master restarted by Ray: find the workers again, keep them going
            self._start_membership()

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
                server = Server(self._handle, _bind_host(cfg.host), port, cfg.max_frame,
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
                if self.journal.appended >= 1000:
                    self.core.apply(rec)
                    try:
                        self.journal.snapshot(self.core.state())
                    except OSError as exc:   # the change is durable in the log already
                        log.error("journal snapshot failed (tried again later): %s", exc)
                    return
            self.core.apply(rec)

    # -- Ray API (the CLI and workers) --------------------------------------------------
    def address(self) -> str:
        return self.server.address

    def token(self, ns: str = "default") -> str:
        with self._lock:
            return self.core.tokens[ns]

    def deploy(self, timeout: float = 60.0) -> list[str]:
        """One worker on every alive Ray node; returns the ids of registered workers.
        From then on the master keeps it so, like a DaemonSet."""
        self._ensure_workers()
        deadline = time.monotonic() + timeout
        ids = []
        for nid, handle in list(self._handles.items()):
            info = ray.get(handle.info.remote(), timeout=max(1, deadline - time.monotonic()))
            self.heartbeat(info)
            ids.append(nid)
        self._start_membership()
        return sorted(ids)

    def _ensure_workers(self) -> None:
        """A worker on every alive node that has none; the workers of dead nodes are lost."""
        from ..worker.actor import WorkerActor
        alive = placement.nodes_for_workers(ray.nodes(), self.config.node_selector)
        for nid in sorted(alive - set(self._handles)):
            name = names.worker_actor(nid)
            try:
                handle = ray.get_actor(name, namespace=names.RAY_NAMESPACE)
            except ValueError:
                handle = WorkerActor.options(
                    name=name, namespace=names.RAY_NAMESPACE, lifetime="detached",
                    max_restarts=-1, max_task_retries=0, num_cpus=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False),
                ).remote(dict(self.config.to_dict(), cluster_id=self.core.cluster_id,
                              worker_secret=self.core.worker_secret), nid)
            self._handles[nid] = handle
        for nid in set(self._handles) - alive:
            self._dead_nodes.add(nid)
            handle = self._handles.pop(nid)
            try:   # its node is gone: do not let Ray keep trying to restart it there
                ray.kill(handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
            self._mark_lost(nid)

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
            self._lost.pop(wid, None)
            version = self.core.register_worker(info)
            rules = self.core.rules_version
        report = report or {}
        if not report.get("full") and not self.blocks.known(wid):
            return {"version": version, "resync": True, "rules": rules}
        self.blocks.apply(wid, report)
        with self._lock:
            self._note_applied(wid, report.get("seq"))
            if isinstance(report.get("by_dataset"), dict):
                self._ds_counts[wid] = report["by_dataset"]
        return {"version": version, "rules": rules}

    def _mark_lost(self, worker_id: str) -> None:
        with self._lock:
            info = self.core.workers.get(worker_id)
            if info is not None:
                self._lost[worker_id] = info
                self.core.remove_worker(worker_id)   # clients stop routing to it
            self.blocks.drop_worker(worker_id)
            self._seen.pop(worker_id, None)

    def _start_membership(self) -> None:
        if self._membership is None:
            self._membership = threading.Thread(target=self._membership_loop, daemon=True,
                                                name="fluidcache-membership")
            self._membership.start()

    def _membership_loop(self) -> None:
        interval = self.config.heartbeat_interval
        while not self._stop.wait(interval):
            try:
                self._ensure_workers()
                now = time.monotonic()
                with self._lock:
                    late = [w for w, t in self._seen.items() if now - t > 3 * interval]
                for wid in late:
                    log.warning("worker %s missed its heartbeats: marked lost", wid)
                    self._mark_lost(wid)
                with self._lock:
                    self.core.prune(now)             # expired listings go (digests stay)
                self._prune_jobs(now)
                self._publish_metrics()
            except Exception:  # noqa: BLE001 - membership must keep running
                log.exception("membership round failed")

    def check_worker(self, secret: str) -> None:
        """Only the workers this master made know the worker secret."""
        if not hmac.compare_digest(str(secret).encode(), self.core.worker_secret.encode()):
            raise AccessDenied("this call is for the cluster's workers only")

    def dataset_for_worker(self, ns: str, name: str) -> dict:
        """The full record (with under-store options) of a dataset, for workers only,
        with the scope its weak versions must carry."""
        with self._lock:
            ds = self.core.dataset(ns, name)
        return dict(ds.to_record(), weak_scope=self.listings.weak_scope(ds))

    def tokens(self) -> dict:
        with self._lock:
            return dict(self.core.tokens)

    def shutdown(self, keep_cache: bool = False) -> None:
        """Stop the cluster: every worker stops serving and gives its memory tier back
        (unless `keep_cache`), then the workers and the server go."""
        self._stop.set()
        refs = [h.release.remote(keep_cache) for h in self._handles.values()]
        if refs:
            try:
                ray.wait(refs, num_returns=len(refs), timeout=30)
            except Exception:  # noqa: BLE001 - a worker already gone has nothing to release
                pass
        for handle in list(self._handles.values()):
            try:
                ray.kill(handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._handles.clear()
        self.server.stop()

    # -- client endpoint ----------------------------------------------------------------
    async def _handle(self, req, payload):
        if req.op == "ping":
            return {"pong": True}, None
        fn = getattr(self, "op_" + req.op, None)
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

    def op_cluster(self, ns: str, args: dict) -> dict:
        """The cluster map, a page of workers at a time: {"version", "block_size",
        "workers", "next"} (clients ask for pages until `next` is None)."""
        limit = paging.check_cursor(args.get("after"), args.get("limit", paging.PAGE_ITEMS))
        with self._lock:
            m = self.core.cluster_map()
        m["workers"], m["next"] = paging.page(m["workers"], lambda w: w["id"],
                                              args.get("after"), limit)
        m["block_size"] = self.config.block_size
        return m

    def op_namespace_create(self, ns: str, args: dict) -> dict:
        """A new namespace and its token, with what it may mount (`allow`: URL prefixes,
        `endpoints`, `node_credentials`). Only the `default` namespace (the cluster's
        administrator, who started it) may create namespaces and grant."""
        if ns != "default":
            raise AccessDenied("only the default namespace's token may create namespaces")
        name = check_name("namespace", _str(args, "name"))
        grant = self._grant_of(args)
        with self._lock:
            if name in self.core.tokens:
                raise AlreadyExists(f"namespace {name} already exists")
            self._commit({"op": "namespace", "ns": name, "token": secrets.token_urlsafe(32)})
            if grant.prefixes or grant.endpoints or grant.node_credentials:
                self._commit({"op": "grant", "ns": name, **grant.to_record()})
            return {"namespace": name, "token": self.core.tokens[name],
                    "grant": self.core.grants.get(name, tenants.Grant()).to_record()}

    def op_namespace_grant(self, ns: str, args: dict) -> dict:
        """Let a tenant namespace mount more (grants only add)."""
        if ns != "default":
            raise AccessDenied("only the default namespace's token may grant")
        name = _str(args, "name")
        grant = self._grant_of(args)
        with self._lock:
            if name not in self.core.tokens or name == "default":
                raise NotFound(f"no tenant namespace {name!r}")
            self._commit({"op": "grant", "ns": name, **grant.to_record()})
            return {"namespace": name, "grant": self.core.grants[name].to_record()}

    def op_namespace_show(self, ns: str, args: dict) -> dict:
        name = _str(args, "name", ns)
        if ns != "default" and name != ns:
            raise AccessDenied("a namespace sees only itself")
        with self._lock:
            if name not in self.core.tokens:
                raise NotFound(f"no namespace {name!r}")
            return {"namespace": name, "admin": name == "default",
                    "grant": self.core.grants.get(name, tenants.Grant()).to_record()}

    @staticmethod
    def _grant_of(args: dict) -> "tenants.Grant":
        return tenants.Grants(args.get("allow") or [], args.get("endpoints") or [],
                              bool(args.get("node_credentials", False))).grant()

    def op_namespaces(self, ns: str, args: dict) -> dict:
        """A page of namespace names: {"items", "next"}."""
        limit = paging.check_cursor(args.get("after"), args.get("limit", paging.PAGE_ITEMS))
        with self._lock:
            names = sorted(self.core.tokens) if ns == "default" else [ns]
        items, nxt = paging.page(names, lambda n: n, args.get("after"), limit)
        return {"items": items, "next": nxt}

    def op_datasets(self, ns: str, args: dict) -> dict:
        """A page of the namespace's datasets: {"items", "next"}."""
        limit = paging.check_cursor(args.get("after"), args.get("limit", paging.PAGE_ITEMS))
        with self._lock:
            ds = [d.public() for d in self.core.in_namespace(ns)]
        items, nxt = paging.page(ds, lambda d: d["name"], args.get("after"), limit)
        return {"items": items, "next": nxt}

    def op_dataset_show(self, ns: str, args: dict) -> dict:
        """A dataset's public record, with how many pins and TTLs it has (the rules
        themselves come in pages from `rules`: this reply never grows with them)."""
        with self._lock:
            d = self.core.dataset(ns, _str(args, "name"))
            return dict(d.public(), pin_count=len(self.core.pins.get((ns, d.name), {})),
                        ttl_count=len(self.core.ttls.get((ns, d.name), {})))

    def op_dataset_create(self, ns: str, args: dict) -> dict:
        """A dataset over one or more mounts. Everything is checked before anything is
        opened: a tenant's mounts against its grant and the option allow-list
        (tenants.py), the admin's options as plain data; then each mount is opened once
        (not kept) to fail now rather than at the first read."""
        mounts = args.get("mounts")
        if not isinstance(mounts, list) or not mounts or len(mounts) > 64:
            raise InvalidRequest("dataset_create needs a list of 1-64 mounts")
        options = args.get("options") or {}
        if not isinstance(options, dict):
            raise InvalidRequest("options must be a map")
        read_only = args.get("read_only", True)
        if not isinstance(read_only, bool):
            raise InvalidRequest("read_only must be true or false")
        with self._lock:
            grant = self.core.grants.get(ns)
        specs = []
        for m in mounts:
            if not (isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m)):
                raise InvalidRequest("each mount is [point, url]")
            if ns == "default":
                url, opts = m[1], dict(tenants.check_plain(options))
            else:
                url, opts = tenants.check_tenant(m[1], options, grant,
                                                 self.config.tenant_protocols)
            specs.append(MountSpec(normalize(m[0]), url, opts))
        ds = Dataset(_str(args, "name"), ns, tuple(specs), args.get("replicas", 1),
                     args.get("sync"), args.get("selector") or {}, read_only,
                     args.get("routing") or "partitioned", uid=secrets.token_hex(8))
        tenants.check_plain(ds.to_record(), "the dataset")
        with self._lock:
            self.core.check_new(ds)
            self._check_share(ns)
        for spec in specs:  # fail now, not at the first read, if a mount cannot be opened
            Mount(spec.url, spec.options, self.config.max_dir_entries).info("")
        with self._lock:
            self.core.check_new(ds)
            self._check_share(ns)             # again: others may have been made meanwhile
            self._commit({"op": "dataset_add", "dataset": ds.to_record()})
        return ds.public()

    def _check_share(self, ns: str) -> None:
        if ns != "default" and len(self.core.in_namespace(ns)) >= self.config.tenant_datasets:
            raise InvalidRequest(f"namespace {ns} has {self.config.tenant_datasets} "
                                 "datasets already (the most a tenant may have)")

    def op_dataset_rm(self, ns: str, args: dict) -> dict:
        with self._lock:
            ds = self.core.dataset(ns, _str(args, "name"))
        self._free_owner(f"{ns}/{ds.name}")           # its cache goes with it
        with self._lock:
            self._commit({"op": "dataset_rm", "ns": ns, "name": ds.name})
            self.blocks.drop_owner(f"{ns}/{ds.name}")
        self.listings.forget(ns, ds.name)
        return ds.public()

    def op_ls(self, ns: str, args: dict) -> dict:
        """One page of a directory: {"entries": [...], "next": cursor or None, "epoch"}.
        A file lists as itself, as in other fsspec filesystems."""
        ds, path = self._target(ns, args)
        epoch = self.listings.epoch(ds)      # before the listing: never newer than it
        page = self.listings.page(ds, path, args.get("after"),
                                  args.get("limit", PAGE), bool(args.get("refresh")))
        return dict(page, epoch=epoch)

    def op_info(self, ns: str, args: dict) -> dict:
        """{"entry": a file's or directory's info, "epoch": the dataset's epoch}."""
        ds, path = self._target(ns, args)
        epoch = self.listings.epoch(ds)      # before the entry: never newer than it
        entry = self.listings.entry(ds, path, bool(args.get("refresh")))
        return {"entry": entry, "epoch": epoch}

    def op_epoch(self, ns: str, args: dict) -> dict:
        """The dataset's metadata epoch: when it moves, cached listings are stale."""
        with self._lock:
            ds = self.core.dataset(ns, _str(args, "ds"))
        return {"epoch": self.listings.epoch(ds)}

    def op_status(self, ns: str, args: dict) -> dict:
        """The master, a page of workers and a page of the namespace's datasets, with
        cursors (`workers_next`, `datasets_next`); `part` ("workers" or "datasets") with
        `after` asks for one more page of one list: {"items", "next"}."""
        after, part = args.get("after"), args.get("part")
        limit = paging.check_cursor(after, args.get("limit", 500))
        if part == "workers":
            return self._status_workers(after, limit)
        if part == "datasets":
            return self._status_datasets(ns, after, limit)
        if part is not None:
            raise InvalidRequest("status: part is 'workers' or 'datasets'")
        w, d = self._status_workers(None, limit), self._status_datasets(ns, None, limit)
        with self._lock:
            sizes = {"listings": self.core.listing_count(), "mounts": self.listings.mount_count(),
                     "load_jobs": len(self._jobs)}
        return {"master": {"address": self.address(), "pid": os.getpid(),
                           "node_id": ray.get_runtime_context().get_node_id(),
                           "connections": self.server.connections, **sizes},
                "workers": w["items"], "workers_next": w["next"],
                "datasets": d["items"], "datasets_next": d["next"]}

    def _status_workers(self, after, limit: int) -> dict:
        """A page of workers with their tiers and counters (asked of the page's workers
        at once: one timeout, not one each)."""
        with self._lock:
            infos = list(self.core.cluster_map()["workers"])
            infos += [dict(i, alive=False, lost=True) for i in self._lost.values()]
        infos.sort(key=lambda i: i["id"])
        chosen, nxt = paging.page(infos, lambda i: i["id"], after, limit)
        refs = {}
        for info in chosen:
            handle = None if info.get("lost") else self._worker_handle(info["node_id"])
            if handle is not None:
                refs[info["id"]] = handle.stats.remote()
        ready = set(ray.wait(list(refs.values()), num_returns=len(refs), timeout=10)[0]
                    if refs else ())
        out = []
        for info in chosen:
            entry = dict(info, alive=False, tiers=[], stats={})
            ref = refs.get(info["id"])
            if ref is not None and ref in ready:
                try:
                    st = ray.get(ref)
                    entry.update(alive=True, tiers=st["tiers"], stats=st["stats"])
                except Exception as exc:  # noqa: BLE001 - a dead worker is reported, not raised
                    entry["error"] = type(exc).__name__
            elif ref is not None:
                entry["error"] = "no answer in 10s"
            out.append(entry)
        return {"items": out, "next": nxt}

    def _status_datasets(self, ns: str, after, limit: int) -> dict:
        """A page of the namespace's datasets with their cached bytes (block reports)
        and hits and misses (the workers' heartbeats)."""
        with self._lock:
            datasets = self.core.in_namespace(ns)
        names = [d.name for d in datasets]
        start = 0 if after is None else bisect.bisect_right(names, after)
        rows = [self._dataset_status(d) for d in datasets[start:start + limit]]
        items, nxt = paging.page(rows, lambda d: d["name"], None, limit)
        if nxt is None and start + limit < len(datasets):
            nxt = items[-1]["name"]
        return {"items": items, "next": nxt}

    def _dataset_status(self, d: Dataset) -> dict:
        owner = f"{d.namespace}/{d.name}"
        with self._lock:
            per = self.blocks.by_worker(owner)
            counts = [c.get(owner, [0, 0]) for c in self._ds_counts.values()]
        return dict(d.public(), cached_bytes=sum(per.values()), cached_by_worker=per,
                    hits=sum(c[0] for c in counts), misses=sum(c[1] for c in counts))

    # -- helpers -------------------------------------------------------------------------
    def _worker_handle(self, wid: str):
        return worker_handle(self._handles, wid)

    def _target(self, ns: str, args: dict) -> tuple[Dataset, str]:
        with self._lock:
            ds = self.core.dataset(ns, _str(args, "ds"))
        return ds, normalize(_str(args, "p", ""))


def _str(args: dict, key: str, default: str | None = None) -> str:
    v = args.get(key, default)
    if not isinstance(v, str):
        raise InvalidRequest(f"argument {key!r} must be a string")
    return v


@ray.remote(num_cpus=0, max_concurrency=16)
class MasterActor:
    """The Ray face of the Master (no coroutine methods: Ray runs it as a threaded actor).

    Trust: whoever can run a Ray driver or job in this Ray cluster is the cluster's
    administrator (Ray lets them run code on every node); `address` and `token` serve
    them (discovery inside a Ray job). The methods workers call (`heartbeat`, `tokens`,
    `dataset_for_worker`, `rules_for_worker`) also want the cluster's worker secret,
    which the master hands only to the workers it creates: a forged heartbeat cannot
    register an address that clients would then send their tokens to."""

    def __init__(self, config: dict, token: str | None = None) -> None:
        self._m = Master(config, token)

    def address(self) -> str:
        return self._m.address()

    def token(self, ns: str = "default") -> str:
        return self._m.token(ns)

    def deploy(self) -> list[str]:
        return self._m.deploy()

    def heartbeat(self, info: dict, report: dict | None = None, secret: str = "") -> dict:
        self._m.check_worker(secret)
        return self._m.heartbeat(info, report)

    def dataset_for_worker(self, ns: str, name: str, secret: str = "") -> dict:
        self._m.check_worker(secret)
        return self._m.dataset_for_worker(ns, name)

    def tokens(self, secret: str = "") -> dict:
        self._m.check_worker(secret)
        return self._m.tokens()

    def rules_for_worker(self, secret: str = "") -> dict:
        self._m.check_worker(secret)
        return self._m.rules_for_worker()

    def shutdown(self, keep_cache: bool = False) -> None:
        self._m.shutdown(keep_cache)
