"""The worker: one Ray actor per node, pinned to it, serving blocks over TCP.

Owns: the node's block store (tiering/), the data server (service.py, uvloop), fetching
misses from the under store with one fetch per block however many readers wait, the
worker's counters, and registration with the master.
Never: trust a client's path (it is normalized and resolved through the mount table
here) or a client's size (a block's bytes depend only on the file's identity, version
and index; a mismatch is reported as StaleVersion).
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple
from dataclasses import replace

import ray

from .. import blocks, names, placement
from ..config import Config
from ..errors import AccessDenied, InvalidRequest, NotFound, StaleVersion
from ..dataset import Dataset, normalize
from ..service import Server, bind_host as _bind_host, limits_of
from ..tiering import dirs, layout
from ..tiering.store import BlockStore
from ..understore import Mount
from ..understore.versions import is_weak, scope_of
from ..wire import BlockRead
from .loads import Loads

log = logging.getLogger(__name__)
_RECORD_TTL = 5.0
_KEEP_DATASETS = 1024    # dataset records a worker keeps (least recently fetched go)
_KEEP_MOUNTS = 256       # opened mounts a worker keeps


class Record(NamedTuple):
    expires: float
    dataset: Dataset
    weak_scope: str
TOUCH_MAX = 8192         # keys in one touch (~300 KiB: well under a frame)
PREFETCH_MAX = 64        # prefetch hints being filled at once; more are dropped


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
        self.counters = dict(hits=0, misses=0, bytes_served=0, ufs_bytes_read=0,
                             ufs_fetches=0, short_circuit_hits=0, short_circuit_bytes=0,
                             prefetches=0)
        self.metrics = _metrics(node_id)
        self._datasets: dict[tuple[str, str], Record] = {}
        self.by_dataset: dict[str, list[int]] = {}     # "ns/name" -> [hits, misses]
        self._owner_of: dict[str, str] = {}            # block key -> "ns/name"
        self._mounts: dict[tuple, Mount] = {}
        self._tokens: dict[str, str] = {}
        self._tokens_at = 0.0
        self._token_refresh: asyncio.Future | None = None
        self._inflight: dict[str, asyncio.Future] = {}
        self._fills: dict[str, asyncio.Task] = {}      # key -> fetch-and-cache in flight
        self._prefetching = 0                          # hints being filled now
        self._shares: dict[str, asyncio.Semaphore] = {}   # namespace -> fetch threads
        self._opening: dict[tuple, asyncio.Future] = {}   # mounts being opened
        self.loads = Loads(self)
        self._rules_version = -1
        self._pinned: set[str] = set()                 # keys pinned by the master's rules
        self._ttl_keys: set[str] = set()
        self._seq = 0                                  # reports sent, numbered
        self._beat_now = threading.Event()
        self.map_version = 0                # the newest cluster map version we know of
        self._report_lock = threading.Lock()
        self._adds: dict[str, list] = {}
        self._removes: set[str] = set()
        self._resync = True                 # the first report is a full one
        self.store.listener = self._on_block
        self._fetch = ThreadPoolExecutor(cfg.fetch_threads, thread_name_prefix="fc-fetch")
        self._stopping = threading.Event()
        self._master = ray.get_actor(names.MASTER_ACTOR, namespace=names.RAY_NAMESPACE)
        self.server = Server(self._handle, _bind_host(cfg.host), cfg.worker_port, cfg.max_frame,
                             name="fluidcache-data", fast=self._fast,
                             limits=limits_of(cfg)).start()
        self._beat()
        threading.Thread(target=self._heartbeats, daemon=True, name="fluidcache-hb").start()

    def _heartbeats(self) -> None:
        """Tell the master we are alive, every interval, with what our blocks did since.
        A restarted master learns of this worker, and all it holds, this way."""
        while True:
            self._beat_now.wait(self.config.heartbeat_interval)
            self._beat_now.clear()
            if self._stopping.is_set():
                return
            try:
                self._beat()
            except Exception as exc:  # noqa: BLE001 - the master may be restarting
                log.warning("heartbeat to the master failed: %s", exc)
                self._resync = True

    def _beat(self) -> None:
        report = self._take_report()
        report["by_dataset"] = {o: list(v) for o, v in list(self.by_dataset.items())}
        reply = ray.get(self._master.heartbeat.remote(self.info(), report, self._secret),
                        timeout=60)
        if self.metrics is not None:
            try:
                self.metrics.publish(self.counters, self.by_dataset, self.store.tiers(),
                                     self.store.evictions, self.counters["short_circuit_bytes"],
                                     dict(self.store.read_bytes))
            except Exception as exc:  # noqa: BLE001 - metrics must never stop heartbeats
                log.debug("metrics: %s", exc)
        self.map_version = max(self.map_version, reply.get("version", 0))
        if reply.get("resync"):
            self._resync = True
        if reply.get("rules", self._rules_version) != self._rules_version:
            self.apply_rules(ray.get(self._master.rules_for_worker.remote(self._secret),
                                     timeout=60))

    def report_after(self) -> int:
        """The number of the next report (it carries every change made so far); it is
        sent at once."""
        with self._report_lock:
            seq = self._seq + 1
        self._beat_now.set()
        return seq

    # -- data operations (the master's load, free, pin, ttl, du) -------------------------
    def apply_rules(self, rules: dict) -> None:
        """The master's pins and TTLs, as block keys (also for blocks not held yet)."""
        pins = set(rules["pin"])
        for key in self._pinned - pins:
            self.store.pin(key, False)
        for key in pins - self._pinned:
            self.store.pin(key, True)
        now, ttls = time.time(), dict(rules["ttl"])
        for key in self._ttl_keys - set(ttls):
            self.store.set_ttl(key, None)
        for key, deadline in ttls.items():
            self.store.set_ttl(key, max(0.0, deadline - now))
        self._pinned, self._ttl_keys = pins, set(ttls)
        self._rules_version = rules["version"]

    def free(self, keys: list[str], force: bool) -> dict:
        freed = n = pinned = 0
        for key in keys:
            got = self.store.free(key, force)
            if got is None:
                pinned += 1
            elif got:
                freed, n = freed + got, n + 1
        return {"blocks": n, "bytes": freed, "pinned": pinned, "seq": self.report_after()}

    def on_loop(self, fn, *args):
        """Run `fn(*args)` on the data server's loop (where loads live); its result."""
        async def call():
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(call(), self.server.loop).result(30)

    def fill_of(self, key: str) -> asyncio.Task | None:
        return self._fills.get(key)

    def _count(self, owner: str | None, miss: int) -> None:
        """A hit (miss=0) or a miss (1), in total and for the block's dataset."""
        self.counters["misses" if miss else "hits"] += 1
        if owner is not None:
            self.by_dataset.setdefault(owner, [0, 0])[miss] += 1

    def _on_block(self, event: str, key: str, meta, size: int) -> None:
        if event == "add" and meta is not None:
            self._owner_of[key] = meta.owner
        elif event != "add":
            self._owner_of.pop(key, None)
        with self._report_lock:
            if event == "add":
                self._removes.discard(key)
                self._adds[key] = [key, meta.owner, meta.fid, meta.index, size]
            else:
                self._adds.pop(key, None)
                self._removes.add(key)

    def _take_report(self) -> dict:
        with self._report_lock:
            full, self._resync = self._resync, False
            adds, removes = self._adds, self._removes
            self._adds, self._removes = {}, set()
            self._seq += 1
            seq = self._seq
        if not full:
            return {"add": list(adds.values()), "remove": sorted(removes), "seq": seq}
        held = []
        for key in self.store.keys():
            d = self.store.describe(key)
            if d is not None:
                meta, size = d
                self._owner_of[key] = meta.owner
                held.append([key, meta.owner, meta.fid, meta.index, size])
        return {"full": True, "add": held, "seq": seq}

    def release(self, keep_cache: bool = False) -> None:
        """The cluster stops: stop serving and, unless `keep_cache`, give the memory
        tiers back (their blocks and directories are removed; SSD and HDD tiers stay)."""
        self._stopping.set()
        self.server.stop()
        self.store.stop()
        if keep_cache:
            return
        for (medium, base), path in zip(self._tier_bases, self.store.paths):
            if medium == "MEM":
                dirs.release(path, base)

    # -- Ray API ---------------------------------------------------------------------
    def info(self) -> dict:
        return {"id": self.node_id, "node_id": self.node_id, "host": socket.gethostname(),
                "labels": self.labels, "resources": self.resources,
                "address": self.server.address, "machine": layout.machine_id(),
                "tier_paths": self.store.paths, "pid": os.getpid()}

    def stats(self) -> dict:
        moves = self.store.moves
        stats = dict(self.counters, evictions=self.store.evictions,
                     demotions=moves["demote"], promotions=moves["promote"],
                     expirations=moves["expire"],
                     write_failures=self.store.write_failures,
                     corrupt_blocks=self.store.corrupt_blocks,
                     protocol_errors=self.server.protocol_errors)
        return {"tiers": self.store.tiers(), "stats": stats,
                "datasets": {o: {"hits": h, "misses": m}
                             for o, (h, m) in list(self.by_dataset.items())}}

    # -- data server -----------------------------------------------------------------
    def _fast(self, req, payload):
        """Answer without waiting when we can (the common warm read: a memory-tier block
        of a dataset whose record we hold); None hands the request to `_handle`."""
        if req.op == "ping":
            return {"pong": True, "id": self.node_id}, None
        if req.op not in ("read", "touch", "prefetch"):
            raise InvalidRequest(f"unknown data server operation {req.op!r}")
        if req.op == "prefetch" or not self._token_ok(req.namespace, req.token):
            return None                     # maybe a new namespace: ask the master
        if req.op == "touch":
            return self._touch(req.namespace, req.args)
        r = self._block_read(req.args)
        hit = self._datasets.get((req.namespace, r.dataset))
        if hit is None or hit.expires < time.monotonic():
            return None
        found = self._mount_of(req.namespace, hit, r, r.fid, opened_only=True)
        if found is None:
            return None
        key = blocks.block_key(found[2], r.index, self.config.block_size)
        if not self.store.in_memory(key):
            return None
        data = self.store.get(key, (found[2], r.index))   # tmpfs: cheaper than a thread hop
        if data is None:
            return None
        self._count(f"{req.namespace}/{r.dataset}", 0)
        return self._serve(r, data)

    async def _handle(self, req, payload):
        if req.op not in ("read", "touch", "prefetch"):
            raise InvalidRequest(f"unknown data server operation {req.op!r}")
        await self._authorize(req.namespace, req.token)
        if req.op == "touch":
            return self._touch(req.namespace, req.args)
        r = self._block_read(req.args)
        if req.op == "prefetch":    # a sequential reader's hint: fill it, answer at once
            if self._prefetching >= PREFETCH_MAX:
                return {"ok": False, "busy": True}, None      # a hint may be dropped
            self._prefetching += 1
            asyncio.get_running_loop().create_task(
                self._prefetch(req.namespace, r, r.fid))
            return {"ok": True}, None
        return self._serve(r, await self.block(req.namespace, r, r.fid))

    async def _prefetch(self, ns: str, r: BlockRead, fid) -> None:
        self.counters["prefetches"] += 1
        try:
            await self.block(ns, r, fid, read=False, hint=True)
        except Exception as exc:  # noqa: BLE001 - a hint: the read itself will report
            log.debug("prefetch of %s/%s block %d: %s", r.dataset, r.path, r.index, exc)
        finally:
            self._prefetching -= 1

    def _touch(self, ns: str, args: dict):
        """Short-circuit hits of namespace `ns`: only blocks of its own datasets count (a
        key of another namespace is ignored: no probing whether it is cached, no keeping
        it hot)."""
        keys = args.get("keys")
        if not isinstance(keys, list) or len(keys) > TOUCH_MAX:
            raise InvalidRequest(f"touch needs a list of at most {TOUCH_MAX} keys")
        held, mine = 0, f"{ns}/"
        for k in keys:
            owner = self._owner_of.get(k) if isinstance(k, str) else None
            if owner is not None and owner.startswith(mine) and self.store.touch(k):
                held += 1
                self.counters["short_circuit_bytes"] += self.store.size_of(k)
                self._count(self._owner_of.get(k), 0)
        self.counters["short_circuit_hits"] += held
        return {"held": held}, None

    def _block_read(self, args: dict) -> BlockRead:
        r = BlockRead.from_args(args)
        bs = r.block_size or self.config.block_size
        if bs != self.config.block_size:
            raise StaleVersion(f"the cluster's block size is {self.config.block_size}, "
                               f"not {bs}; refresh the cluster map")
        if r.index >= max(1, blocks.block_count(r.size, bs)):
            raise InvalidRequest(f"block {r.index} is past the end of a {r.size}-byte file")
        return r

    def _serve(self, r: BlockRead, data):
        if len(data) != self._expected(r):
            raise StaleVersion(f"{r.dataset}/{r.path}: size changed in the under store; "
                               "list it again")
        if r.offset > len(data):
            raise InvalidRequest(f"offset {r.offset} is past the end of block {r.index}")
        end = len(data) if r.length < 0 else min(len(data), r.offset + r.length)
        out = data[r.offset:end] if (r.offset or end != len(data)) else data
        self.counters["bytes_served"] += len(out)
        return {"n": len(out), "mv": self.map_version}, out

    def _token_ok(self, ns, token) -> bool:
        expected = self._tokens.get(ns or "")
        return expected is not None and hmac.compare_digest((token or "").encode(),
                                                            expected.encode())

    async def _authorize(self, ns, token) -> None:
        if self._token_ok(ns, token):
            return
        # maybe a namespace made since we last asked: ask the master again, at most once a
        # second for all requests together (a fresh token waits, a wrong one is refused)
        if self._token_refresh is None or self._token_refresh.done():
            self._token_refresh = asyncio.ensure_future(self._refresh_tokens())
        await asyncio.shield(self._token_refresh)
        if not self._token_ok(ns, token):
            raise AccessDenied(f"wrong or missing token for namespace {ns!r}")

    async def _refresh_tokens(self) -> None:
        wait = 1.0 - (time.monotonic() - self._tokens_at)
        if wait > 0:
            await asyncio.sleep(wait)          # the rate limit on master lookups
        self._tokens = await _ray_call(self._master.tokens.remote(self._secret))
        self._tokens_at = time.monotonic()

    async def _dataset(self, ns: str, name: str, fresh: bool = False) -> Record:
        """The dataset's record (mounts, options, weak scope), asked of the master at most
        every _RECORD_TTL seconds. A dataset the master no longer knows is forgotten here
        too: its record, its mounts and its counters."""
        hit = self._datasets.get((ns, name))
        if hit is None or fresh or hit.expires < time.monotonic():
            try:
                record = await _ray_call(self._master.dataset_for_worker.remote(
                    ns, name, self._secret))
            except Exception as exc:
                if "no dataset" in str(exc):
                    self._forget(ns, name)
                    raise NotFound(f"no dataset {name!r} in namespace {ns!r}") from None
                raise
            hit = Record(time.monotonic() + _RECORD_TTL, Dataset.from_record(record),
                         record.get("weak_scope", ""))
            self._datasets[(ns, name)] = hit
            while len(self._datasets) > _KEEP_DATASETS:
                self._datasets.pop(next(iter(self._datasets)))
        return hit

    async def _open_once(self, ns: str, rec: Record, r: BlockRead, hint: bool) -> None:
        """Open the mount `r` reads from, once however many readers ask (the others wait
        here, not in a fetch thread: a store that does not answer holds one thread)."""
        spec, _ = rec.dataset.resolve(normalize(r.path))
        key = (ns, rec.dataset.name, rec.dataset.uid, spec.point, spec.url)
        fut = self._opening.get(key)
        if fut is None:
            fut = self._opening[key] = asyncio.ensure_future(
                self._in_share(ns, self._open_mount, ns, rec, r, hint=hint))
            fut.add_done_callback(lambda _f: self._opening.pop(key, None))
        await asyncio.shield(fut)

    def _open_mount(self, ns: str, rec: Record, r: BlockRead) -> None:
        spec, _ = rec.dataset.resolve(normalize(r.path))
        for key, mount in list(self._mounts.items()):
            if key[:2] == (ns, rec.dataset.name) and key[3:5] == (spec.point, spec.url):
                mount.open()

    def _share(self, name: str, n: int) -> asyncio.Semaphore:
        sem = self._shares.get(name)
        if sem is None:
            sem = self._shares[name] = asyncio.Semaphore(max(1, n))
        return sem

    async def _in_share(self, ns: str, fn, *args, hint: bool = False):
        """`fn(*args)` in a fetch thread, within the namespace's share of them: a tenant
        uses at most half (one whose store hangs cannot take every thread), the admin
        all; prefetch hints (`hint`) of all namespaces together a quarter, so readers
        always have threads. A share is given back when the thread is done, not when a
        reader gives up."""
        threads = self.config.fetch_threads
        sem = self._share(ns, threads if ns == "default" else threads // 2)
        if hint:      # (a hint waits for its slot before it takes one of its namespace)
            await self._share("\0hints", threads // 4).acquire()
        try:
            await sem.acquire()
        except BaseException:
            if hint:
                self._shares["\0hints"].release()
            raise
        if hint:
            sem = _Both(sem, self._shares["\0hints"])
        try:
            work = self._fetch.submit(fn, *args)
        except BaseException:
            sem.release()
            raise
        loop = asyncio.get_running_loop()
        work.add_done_callback(lambda _w: loop.call_soon_threadsafe(sem.release))
        return await asyncio.wrap_future(work)

    def _forget(self, ns: str, name: str) -> None:
        self._datasets.pop((ns, name), None)
        for key in [k for k in self._mounts if k[:2] == (ns, name)]:
            del self._mounts[key]
        self.by_dataset.pop(f"{ns}/{name}", None)

    def _mount_of(self, ns: str, rec: Record, r: BlockRead, fid, opened_only: bool = False):
        """(mount, relative path, file id) of a read in the record's dataset, computed
        from our own mount table; None when the client's file id is not ours (our record
        is stale), or with `opened_only` when the mount is not open yet (opening it may
        ask the store: that is done off the event loop). A weak version must carry this
        dataset's scope: a client cannot plant one dataset's bytes under another's weak
        keys."""
        ds = rec.dataset
        if is_weak(r.version) and scope_of(r.version) != rec.weak_scope:
            raise StaleVersion(f"{r.dataset}/{r.path}: a weak version of another dataset "
                               "or master run; list it again")
        spec, rel = ds.resolve(normalize(r.path))
        key = (ns, ds.name, ds.uid, spec.point, spec.url, repr(sorted(spec.options.items())))
        mount = self._mounts.get(key)
        if mount is None:
            mount = self._mounts[key] = Mount(spec.url, spec.options)
            while len(self._mounts) > _KEEP_MOUNTS:
                self._mounts.pop(next(iter(self._mounts)))
        if opened_only and not mount.opened:
            return None
        myfid = blocks.file_id(mount.url_of(rel), r.version, ns)
        if fid and fid != myfid:
            return None
        return mount, rel, myfid

    async def block(self, ns: str, r: BlockRead, fid, read: bool = True,
                    hint: bool = False) -> memoryview | bytes:
        """A block's bytes: from a tier, else fetched once (single flight) and cached.
        `read`: a reader's request, counted as a hit or a miss (a load's is not);
        `hint`: a prefetch hint's, fetched within the hints' share of threads."""
        loop = asyncio.get_running_loop()
        for fresh in (False, True):
            rec = await self._dataset(ns, r.dataset, fresh)
            found = self._mount_of(ns, rec, r, fid, opened_only=True)
            if found is None:        # maybe not open yet: open it in a thread, in our share
                await self._open_once(ns, rec, r, hint)
                found = self._mount_of(ns, rec, r, fid)
            if found is not None:
                break
        else:
            raise StaleVersion(f"{r.dataset}/{r.path}: the dataset's mounts changed; "
                               "list it again")
        mount, rel, fid = found
        key = blocks.block_key(fid, r.index, self.config.block_size)
        if self.store.in_memory(key):
            data = self.store.get(key, (fid, r.index))   # tmpfs: cheaper than a thread hop
        else:
            data = await loop.run_in_executor(None, self.store.get, key, (fid, r.index))
        if data is not None:
            if read:
                self._count(f"{ns}/{r.dataset}", 0)
            return data
        fut = self._inflight.get(key)
        if fut is None:       # single flight: one fetch per key, however many readers
            fut = self._inflight[key] = loop.create_future()
            task = self._fills[key] = loop.create_task(
                self._fill(key, mount, rel, r, f"{ns}/{r.dataset}", rec.dataset, fid, fut,
                           hint=hint))
            task.add_done_callback(lambda _t, k=key: (self._inflight.pop(k, None),
                                                      self._fills.pop(k, None)))
        if read:
            self._count(f"{ns}/{r.dataset}", 1)
        return await asyncio.shield(fut)

    def _expected(self, r: BlockRead) -> int:
        return blocks.block_length(r.size, self.config.block_size, r.index) if r.size else 0

    async def _fill(self, key: str, mount: Mount, rel: str, r: BlockRead, dsid: str,
                    ds: Dataset, mount_fid: str, fut: asyncio.Future,
                    hint: bool = False) -> None:
        """Fetch a whole block from the under store (one fetch per key), hand it to the
        waiting readers at once, then cache it: the tier write never delays a reader, and
        the key stays in flight until the block is in its tier (no second fetch)."""
        loop = asyncio.get_running_loop()
        start = r.index * self.config.block_size
        t0 = time.monotonic()
        try:
            data, cacheable = await self._in_share(
                dsid.partition("/")[0], mount.read_range, rel, r.version, start,
                start + self.config.block_size, r.size, hint=hint)
            if self.metrics is not None:
                self.metrics.observe_fetch(time.monotonic() - t0)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - every waiting reader gets it
            fut.set_exception(exc)
            fut.exception()       # retrieved here too: no "never retrieved" noise
            return
        fut.set_result(data)
        self.counters["ufs_bytes_read"] += len(data)
        self.counters["ufs_fetches"] += 1
        if len(data) != self._expected(r) or not cacheable:
            return             # not the listed size, or not shown to be that version's
                               # (racy, or no validator in the answer): never cache it
        if not placement.matches(ds.selector, self.labels, self.resources):
            return             # not a node this dataset may cache on: read through only
        try:
            await loop.run_in_executor(None, self.store.put, key, data,
                                       layout.Meta(dsid, mount_fid, r.index))
        except Exception:      # noqa: BLE001 - the readers have their bytes; log, go on
            log.exception("caching block %s failed", key)


class _Both:
    """Two semaphores given back together."""

    def __init__(self, *sems: asyncio.Semaphore):
        self.sems = sems

    def release(self) -> None:
        for sem in self.sems:
            sem.release()


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
        self._w.apply_rules(rules)

    def where(self, keys: list) -> dict:
        return self._w.store.tier_bytes(keys)

    def release(self, keep_cache: bool = False) -> None:
        self._w.release(keep_cache)
