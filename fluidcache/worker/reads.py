"""The read path of a worker: the data server's handlers, from a request to a block's bytes.

Owns: the data server's ops (`read`, `touch`, `prefetch`, `ping`): `fast` answers on the
server's loop without waiting (the common warm read: a memory-tier block of a dataset
whose record we hold), `handle` does the rest; `resolve`, the one way a read becomes
(mount, relative path, file id, block key), shared by both; the opened mounts (at most
`mounts_kept`, the first opened go first), each opened by one fetch thread while other
readers wait on the loop; fetching misses from the under store, one fetch per block
however many readers wait (single flight), handed to the readers before it is cached;
the fetch threads and each namespace's share of them; the read counters.
Never: trust a client's path (it is normalized and resolved through the mount table
here) or a client's size (a block's bytes depend only on the file's identity, version
and index; a mismatch is reported as StaleVersion); block the server's loop on a store
or a disk (only memory-tier blocks are read on it).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from .. import blocks, placement
from ..config import Config
from ..dataset import Dataset, normalize
from ..errors import FluidError, InvalidRequest, ProtocolError, StaleVersion, to_wire
from ..tiering import layout
from ..understore import Mount
from ..understore.versions import is_weak, scope_of
from ..wire import BlockRead
from .access import Access, Record
from .stage import Stage

log = logging.getLogger(__name__)
TOUCH_MAX = 8192         # keys in one touch (~300 KiB: well under a frame; clients know it)
_OPS = ("read", "readv", "touch", "prefetch", "peer")
READV_MAX = 64           # reads in one batch (serve.py's bound too)


class Resolved(NamedTuple):
    """Where a read's block comes from, by our own mount table."""

    mount: Mount
    rel: str             # the path within the mount
    fid: str             # the file id (under-store identity, version, namespace)
    key: str             # the block's key


class Reads:
    def __init__(self, config: Config, store, access: Access, owners: Mapping[str, str],
                 node_id: str, labels: dict, resources: list, metrics=None) -> None:
        """`store`: the BlockStore; `owners`: block key -> "ns/name" of the blocks held
        (kept by the reports); `labels`/`resources`: this node's, matched against a
        dataset's selector before a block is cached; `metrics`: WorkerMetrics or None."""
        self.config, self.store, self._access, self._owners = config, store, access, owners
        self.block_size = config.block_size
        self._node_id, self._labels, self._resources = node_id, labels, resources
        self._metrics = metrics
        self.counters = dict(hits=0, misses=0, bytes_served=0, ufs_bytes_read=0,
                             ufs_fetches=0, short_circuit_hits=0, short_circuit_bytes=0,
                             prefetches=0, hinted=0)
        self.by_dataset: dict[str, list[int]] = {}     # "ns/name" -> [hits, misses]
        self.map_version = 0                # the newest cluster map version we know of
        self._mounts: dict[tuple, Mount] = {}
        self._inflight: dict[str, asyncio.Future] = {}
        self._fills: dict[str, asyncio.Task] = {}      # key -> fetch-and-cache in flight
        self._prefetching: dict[str, int] = {}         # namespace -> hints being filled
        self._shares: dict[str, asyncio.Semaphore] = {}   # namespace -> fetch threads
        self._opening: dict[tuple, asyncio.Future] = {}   # mounts being opened
        self._fetch = ThreadPoolExecutor(config.fetch_threads, thread_name_prefix="fc-fetch")
        self.kept = None            # (ns, BlockRead) -> a kept file's block (pending.py)
        self.peers = None           # peers.Peers: blocks from other workers while they move
        # prefetched blocks no tier took (full, fill-once): kept until read once, at most
        # `stage_bytes` (the first staged go first)
        self.stage = Stage(config.stage_bytes)
        self._joined: set[str] = set()                 # fills a reader waits on: not staged

    # -- the data server's handlers ------------------------------------------------------
    def fast(self, req, payload):
        """Answer without waiting when we can (the common warm read: a memory-tier block
        of a dataset whose record we hold); None hands the request to `handle`."""
        if req.op == "ping":
            return {"pong": True, "id": self._node_id}, None
        if req.op not in _OPS:
            raise InvalidRequest(f"unknown data server operation {req.op!r}")
        if req.op in ("prefetch", "readv", "peer") or \
                not self._access.token_ok(req.namespace, req.token):
            return None                     # maybe a new namespace: ask the master
        if req.op == "touch":
            return self._touch(req.namespace, req.args)
        r = self._block_read(req.args)
        rec = self._access.held(req.namespace, r.dataset)
        if rec is None or r.version.startswith("c:"):     # (a kept file's: `block`)
            return None
        found = self.resolve(req.namespace, rec, r, opened_only=True)
        if found is None or not self.store.in_memory(found.key):
            return None
        data = self.store.get(found.key, (found.fid, r.index))  # tmpfs: cheaper than a hop
        if data is None:
            return None
        self._count(f"{req.namespace}/{r.dataset}", 0)
        return self._serve(r, data)

    async def handle(self, req, payload):
        if req.op not in _OPS:
            raise InvalidRequest(f"unknown data server operation {req.op!r}")
        if req.op == "peer":                # another worker's (the worker secret, no ns)
            if self.peers is None:
                raise InvalidRequest("this worker serves no peers")
            return await self.peers.serve(req)
        await self._access.authorize(req.namespace, req.token)
        if req.op == "touch":
            return self._touch(req.namespace, req.args)
        if req.op == "readv":
            return await self._readv(req.namespace, req.args)
        r = self._block_read(req.args)
        if req.op == "prefetch":    # a hint: fill it, answer at once (or, with `wait`,
            if r.version.startswith("c:"):                    # once it has landed)
                return {"ok": False}, None                    # kept files are not fetched
            ns = req.namespace
            cap = self.config.prefetch_max if ns == "default" else self.config.prefetch_max // 2
            if self._prefetching.get(ns, 0) >= max(1, cap):
                return {"ok": False, "busy": True}, None      # a hint may be dropped
            self._prefetching[ns] = self._prefetching.get(ns, 0) + 1
            task = asyncio.get_running_loop().create_task(self._prefetch(ns, r))
            if req.args.get("wait") is True:
                return {"ok": await asyncio.shield(task)}, None
            return {"ok": True}, None
        return self._serve(r, await self.block(req.namespace, r))

    async def _readv(self, ns: str, args: dict):
        """A batch of reads, all at once: {"items": [result | {"e": error}], "mv"} and the
        payloads of the items served, in order. Bounded in count and bytes (else the
        connection is closed after the error)."""
        items = args.get("r")
        if not isinstance(items, list) or not items:
            raise InvalidRequest("readv needs a non-empty list 'r' of reads")
        if len(items) > READV_MAX:
            raise ProtocolError(f"a batch of {len(items)} reads; at most {READV_MAX}")
        if not all(isinstance(a, dict) for a in items):
            raise ProtocolError("readv: every read must be a map")
        if sum(blocks.reply_length(r.size, self.block_size, r.index, r.offset, r.length)
               for r in map(BlockRead.from_args, items)) > self.config.max_data:
            raise ProtocolError(f"a batch of more than {self.config.max_data} bytes")

        async def one(args: dict):
            try:
                r = self._block_read(args)
                return self._serve(r, await self.block(ns, r))
            except FluidError as exc:
                return exc

        results, parts = [], []
        for got in await asyncio.gather(*(one(a) for a in items)):
            if isinstance(got, FluidError):
                results.append({"e": to_wire(got)})
            else:
                results.append(got[0])
                parts.append(got[1])
        return {"items": results, "mv": self.map_version}, parts

    def served(self, report: dict) -> None:
        """A serving process's report (run on the loop): its hits are ours, and the
        blocks it served are touched (they stay in the eviction order as hits)."""
        for dsid, (n, nbytes) in report.get("hits", {}).items():
            self.counters["hits"] += n
            self.counters["bytes_served"] += nbytes
            self.by_dataset.setdefault(dsid, [0, 0])[0] += n
        for key in report.get("keys", ()):
            self.store.touch(key)

    async def _prefetch(self, ns: str, r: BlockRead) -> bool:
        """Fill a hinted block; True once it is in a tier or staged (a read finds it)."""
        self.counters["prefetches"] += 1
        try:
            await self.block(ns, r, read=False, hint=True)
            key = blocks.block_key(r.fid, r.index, self.block_size) if r.fid else None
            fill = self._fills.get(key) if key else None
            if fill is not None:
                await asyncio.shield(fill)      # landed = in its tier (or staged)
            return key is not None and (key in self.store or key in self.stage)
        except Exception as exc:  # noqa: BLE001 - a hint: the read itself will report
            log.debug("prefetch of %s/%s block %d: %s", r.dataset, r.path, r.index, exc)
            return False
        finally:
            self._prefetching[ns] -= 1
            if not self._prefetching[ns]:
                del self._prefetching[ns]

    def _touch(self, ns: str, args: dict):
        """Short-circuit hits of namespace `ns`: only blocks of its own datasets count (a
        key of another namespace is ignored: no probing whether it is cached, no keeping
        it hot). With "hint", a reader's word on when it wants the blocks again, not a
        hit: "soon" keeps them as a hit does (uncounted) and no block of `ns` evicts
        them before they are read (tiering/core.py), "later" makes them the first to
        evict (a sample read once this epoch); in the order given."""
        keys, hint = args.get("keys"), args.get("hint")
        if not isinstance(keys, list) or len(keys) > TOUCH_MAX:
            raise InvalidRequest(f"touch needs a list of at most {TOUCH_MAX} keys")
        if hint not in (None, "soon", "later"):
            raise InvalidRequest("a touch's hint is 'soon' or 'later'")
        held, mine = 0, f"{ns}/"
        for k in keys:
            owner = self._owners.get(k) if isinstance(k, str) else None
            if owner is None or not owner.startswith(mine):
                continue
            if hint is not None:
                held += self.store.cool(k) if hint == "later" else self.store.want(k, ns)
            elif self.store.touch(k):
                held += 1
                self.counters["short_circuit_bytes"] += self.store.size_of(k)
                self._count(owner, 0)
        self.counters["hinted" if hint else "short_circuit_hits"] += held
        return {"held": held}, None

    def _block_read(self, args: dict) -> BlockRead:
        r = BlockRead.from_args(args)
        bs = r.block_size or self.block_size
        if bs != self.block_size:
            raise StaleVersion(f"the cluster's block size is {self.block_size}, "
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

    def _expected(self, r: BlockRead) -> int:
        return blocks.block_length(r.size, self.block_size, r.index) if r.size else 0

    def _count(self, owner: str | None, miss: int) -> None:
        """A hit (miss=0) or a miss (1), in total and for the block's dataset."""
        self.counters["misses" if miss else "hits"] += 1
        if owner is not None:
            self.by_dataset.setdefault(owner, [0, 0])[miss] += 1

    # -- resolving a read ----------------------------------------------------------------
    def resolve(self, ns: str, rec: Record, r: BlockRead,
                opened_only: bool = False) -> Resolved | None:
        """Where read `r` of the record's dataset comes from, by our own mount table; None
        when the client's file id (`r.fid`, if given) is not ours (our record is stale),
        or with `opened_only` when the mount is not open yet (opening it may ask the
        store: that is done off the event loop). A weak version must carry this dataset's
        scope: a client cannot plant one dataset's bytes under another's weak keys."""
        ds = rec.dataset
        if is_weak(r.version) and scope_of(r.version) != rec.weak_scope:
            raise StaleVersion(f"{r.dataset}/{r.path}: a weak version of another dataset "
                               "or master run; list it again")
        spec, rel = ds.resolve(normalize(r.path))
        mount = self.mount_of(ns, ds, spec)
        if opened_only and not mount.opened:
            return None
        fid = blocks.file_id(mount.url_of(rel), r.version, ns)
        if r.fid and r.fid != fid:
            return None
        return Resolved(mount, rel, fid, blocks.block_key(fid, r.index, self.block_size))

    def mount_of(self, ns: str, ds: Dataset, spec) -> Mount:
        """The mount `spec` of dataset `ds` from our table (made, not opened, if new)."""
        key = (ns, ds.name, ds.uid, spec.point, spec.url, repr(sorted(spec.options.items())))
        mount = self._mounts.get(key)
        if mount is None:
            mount = self._mounts[key] = Mount(spec.url, spec.options)
            while len(self._mounts) > self.config.mounts_kept:
                self._mounts.pop(next(iter(self._mounts)))
        return mount

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

    def forget(self, ns: str, name: str) -> None:
        """A dataset the master no longer knows: drop its mounts, staged blocks and
        counters."""
        for key in [k for k in self._mounts if k[:2] == (ns, name)]:
            del self._mounts[key]
        self.stage.drop_owner(f"{ns}/{name}")
        self.by_dataset.pop(f"{ns}/{name}", None)

    def per_dataset(self) -> dict:
        """{"ns/name": [hits, misses]}, a copy."""
        return {o: list(v) for o, v in list(self.by_dataset.items())}

    def saw_map_version(self, version: int) -> None:
        self.map_version = max(self.map_version, version)

    # -- fetch threads -----------------------------------------------------------------
    def _share(self, name: str, n: int) -> asyncio.Semaphore:
        sem = self._shares.get(name)
        if sem is None:
            sem = self._shares[name] = asyncio.Semaphore(max(1, n))
        return sem

    async def _in_share(self, ns: str, fn, *args, hint: bool = False):
        """`fn(*args)` in a fetch thread, within the namespace's share of them: a tenant
        uses at most half (one whose store hangs cannot take every thread), the admin
        all; prefetch hints (`hint`) of all namespaces together half (a stream's window
        of blocks in flight: a quarter gave a cold stream 2.9x s3fs through a store model
        of 20 ms + 64 MB/s per connection, half 4.0x), and of one namespace half its
        share, so its readers always have threads. A share is given back when the thread
        is done, not when a reader gives up."""
        threads = self.config.fetch_threads
        share = threads if ns == "default" else threads // 2
        sem = self._share(ns, share)
        held: list[asyncio.Semaphore] = []
        try:
            if hint:  # (its namespace's hint slot first: a namespace whose store hangs
                      # holds its own slots, never the global ones while it waits)
                for cap in (self._share("\0hints:" + ns, max(1, share // 2)),
                            self._share("\0hints", threads // 2)):
                    await cap.acquire()
                    held.append(cap)
            await sem.acquire()
        except BaseException:
            for cap in held:
                cap.release()
            raise
        if hint:
            sem = _Both(sem, *held)
        try:
            work = self._fetch.submit(fn, *args)
        except BaseException:
            sem.release()
            raise
        loop = asyncio.get_running_loop()
        work.add_done_callback(lambda _w: loop.call_soon_threadsafe(sem.release))
        return await asyncio.wrap_future(work)

    # -- blocks ------------------------------------------------------------------------
    async def block(self, ns: str, r: BlockRead, read: bool = True,
                    hint: bool = False) -> memoryview | bytes:
        """A block's bytes: from a tier, else fetched once (single flight) and cached.
        `read`: a reader's request, counted as a hit or a miss (a load's is not);
        `hint`: a prefetch hint's, fetched within the hints' share of threads. A
        kept file's (version `c:`) comes from the journal (pending.py), if kept here."""
        loop = asyncio.get_running_loop()
        if r.version.startswith("c:"):
            if self.kept is None:
                raise StaleVersion(f"{r.dataset}/{r.path}: not kept here; list it again")
            data = await self.kept(ns, r)
            if read:
                self._count(f"{ns}/{r.dataset}", 0)
            return data
        for fresh in (False, True):
            rec = await self._access.dataset(ns, r.dataset, fresh)
            found = self.resolve(ns, rec, r, opened_only=True)
            if found is None:        # maybe not open yet: open it in a thread, in our share
                await self._open_once(ns, rec, r, hint)
                found = self.resolve(ns, rec, r)
            if found is not None:
                break
        else:
            raise StaleVersion(f"{r.dataset}/{r.path}: the dataset's mounts changed; "
                               "list it again")
        key = found.key
        staged = self.stage.take(key) if read else self.stage.peek(key)
        if staged is not None:           # prefetched for a reader that comes now (a
            if read:                     # hint or a load leaves it for the reader)
                self._count(f"{ns}/{r.dataset}", 0)
            return staged
        if self.store.in_memory(key):
            data = self.store.get(key, (found.fid, r.index))   # tmpfs: cheaper than a hop
        else:
            data = await loop.run_in_executor(None, self.store.get, key, (found.fid, r.index))
        if data is not None:
            if read:
                self._count(f"{ns}/{r.dataset}", 0)
            return data
        fut = self._inflight.get(key)
        if fut is not None and read:
            self._joined.add(key)   # a reader has it from this fetch: not staged after
        if fut is None:       # single flight: one fetch per key, however many readers
            fut = self._inflight[key] = loop.create_future()
            task = self._fills[key] = loop.create_task(
                self._fetch_and_cache(found, r, f"{ns}/{r.dataset}", rec.dataset, fut,
                                      hint=hint))
            task.add_done_callback(lambda _t, k=key: (self._inflight.pop(k, None),
                                                      self._fills.pop(k, None),
                                                      self._joined.discard(k)))
        if read:
            self._count(f"{ns}/{r.dataset}", 1)
        return await asyncio.shield(fut)

    async def fill(self, ns: str, r: BlockRead) -> memoryview | bytes:
        """A load's block (not counted as a read): its bytes, once its fill is over (the
        block is in its tier, unless no tier took it: see `is_cached`)."""
        data = await self.block(ns, r, read=False)
        fill = self._fills.get(blocks.block_key(r.fid, r.index, self.block_size))
        if fill is not None:
            await asyncio.shield(fill)      # done = in its tier, not just fetched
        return data

    def is_cached(self, key: str) -> bool:
        return key in self.store

    async def _fetch_and_cache(self, found: Resolved, r: BlockRead, dsid: str, ds: Dataset,
                               fut: asyncio.Future, hint: bool = False) -> None:
        """Fetch a whole block from the under store (one fetch per key), hand it to the
        waiting readers at once, then cache it: the tier write never delays a reader, and
        the key stays in flight until the block is in its tier (no second fetch)."""
        loop = asyncio.get_running_loop()
        start = r.index * self.block_size
        t0 = time.monotonic()
        ns = dsid.partition("/")[0]
        try:
            data, owned = None, True
            if self.peers is not None and self.peers.active():   # blocks are moving: its
                data, owned = await self._in_share(                # holder has it
                    ns, self.peers.fetch, found.key, found.fid, r.index, hint=hint)
            from_peer = data is not None
            cacheable = from_peer and owned     # (not an owner: served, not kept)
            if not from_peer:
                data, cacheable = await self._in_share(
                    ns, found.mount.read_range, found.rel, r.version, start,
                    start + self.block_size, r.size, hint=hint)
            if self._metrics is not None:
                self._metrics.observe_fetch(time.monotonic() - t0)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - every waiting reader gets it
            fut.set_exception(exc)
            fut.exception()       # retrieved here too: no "never retrieved" noise
            return
        fut.set_result(data)
        if not from_peer:
            self.counters["ufs_bytes_read"] += len(data)
            self.counters["ufs_fetches"] += 1
        if len(data) != self._expected(r) or not cacheable:
            return             # not the listed size, or not shown to be that version's
                               # (racy, or no validator in the answer): never cache it
        if not placement.matches(ds.selector, self._labels, self._resources):
            return             # not a node this dataset may cache on: read through only
        # a prefetch no reader took from the fetch is wanted until read (core.py's marks)
        wanted = hint and found.key not in self._joined
        try:
            took = await loop.run_in_executor(None, self.store.put, found.key, data,
                                              layout.Meta(dsid, found.fid, r.index), ns,
                                              wanted)
        except Exception:      # the readers have their bytes; log, go on
            log.exception("caching block %s failed", found.key)
            took = True
        if not took and hint and found.key not in self._joined:
            self.stage.put(found.key, dsid, data)   # kept until read (stage.py)


class _Both:
    """Two semaphores given back together."""

    def __init__(self, *sems: asyncio.Semaphore):
        self.sems = sems

    def release(self) -> None:
        for sem in self.sems:
            sem.release()
