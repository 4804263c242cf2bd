"""What the master tells about the cluster: the cluster map (`cluster`), the `status`
pages, and the per-dataset metrics it publishes to Ray.

Owns: asking a page of workers for their tiers and counters (at once: one timeout, not
one each), a dataset's cached bytes (block reports) with its hits and misses (the
workers' heartbeats), and the MasterMetrics gauges.
Never: change any state; a worker that does not answer is reported, not raised.
"""
from __future__ import annotations

import bisect
import threading
from typing import Callable

import ray

from .. import paging
from ..config import Config
from ..dataset import Dataset
from ..errors import InvalidRequest
from .blockmap import BlockMap
from .core import MasterCore
from .listings import Listings
from .membership import Membership

_STATS_WAIT = 10.0      # seconds the workers of one status page have to answer


class Status:
    def __init__(self, core: MasterCore, lock: threading.RLock, blocks: BlockMap,
                 listings: Listings, members: Membership, config: Config,
                 about: Callable[[], dict], job_count: Callable[[], int]) -> None:
        """`about()`: the master's own facts (address, pid, node, connections);
        `job_count()`: the load jobs the master remembers."""
        self.core, self._lock, self.blocks, self.listings = core, lock, blocks, listings
        self.members, self.config, self._about, self._job_count = \
            members, config, about, job_count
        self._metrics = None
        self.uploads: Callable[[str | None], dict] = lambda ns: {}   # kept files (pending.py)
        self.rebalance: Callable[[], dict] = dict     # blocks moving (rebalance.py)

    def op_cluster(self, ns: str, args: dict) -> dict:
        """The cluster map, a page of workers at a time: {"version", "block_size",
        "workers", "next"} (clients ask for pages until `next` is None)."""
        limit = paging.check_cursor(args.get("after"), args.get("limit", paging.PAGE_ITEMS))
        with self._lock:
            m = self.core.cluster_map()
            if args.get("after") is None:   # (few: they are workers too)
                m["draining"] = list(self.members.draining.values())
        m["workers"], m["next"] = paging.page(m["workers"], lambda w: w["id"],
                                              args.get("after"), limit)
        m["block_size"] = self.config.block_size
        m["write_chunk"] = self.config.write_chunk
        return m

    def op_status(self, ns: str, args: dict) -> dict:
        """The master, a page of workers and a page of the namespace's datasets, with
        cursors (`workers_next`, `datasets_next`); `part` ("workers" or "datasets") with
        `after` asks for one more page of one list: {"items", "next"}."""
        after, part = args.get("after"), args.get("part")
        limit = paging.check_cursor(after, args.get("limit", 500))
        if part == "workers":
            return self._workers(after, limit)
        if part == "datasets":
            return self._datasets(ns, after, limit)
        if part is not None:
            raise InvalidRequest("status: part is 'workers' or 'datasets'")
        w, d = self._workers(None, limit), self._datasets(ns, None, limit)
        with self._lock:
            sizes = {"listings": self.core.listing_count(), "mounts": self.listings.mount_count()}
        return {"master": dict(self._about(), **sizes, load_jobs=self._job_count()),
                "uploads": self.uploads(None if ns == "default" else ns),
                "rebalance": self.rebalance(),
                "workers": w["items"], "workers_next": w["next"],
                "datasets": d["items"], "datasets_next": d["next"]}

    def _workers(self, after, limit: int) -> dict:
        """A page of workers with their tiers and counters (asked of the page's workers
        at once: one timeout, not one each)."""
        with self._lock:
            infos = list(self.core.cluster_map()["workers"])
            infos += [dict(i, draining=True) for i in self.members.draining.values()]
            infos += [dict(i, alive=False, lost=True) for i in self.members.lost.values()]
        infos.sort(key=lambda i: i["id"])
        chosen, nxt = paging.page(infos, lambda i: i["id"], after, limit)
        refs = {}
        for info in chosen:
            handle = None if info.get("lost") else self.members.handle(info["node_id"])
            if handle is not None:
                refs[info["id"]] = handle.stats.remote()
        ready = set(ray.wait(list(refs.values()), num_returns=len(refs),
                             timeout=_STATS_WAIT)[0] if refs else ())
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
                entry["error"] = f"no answer in {_STATS_WAIT:g}s"
            out.append(entry)
        return {"items": out, "next": nxt}

    def _datasets(self, ns: str, after, limit: int) -> dict:
        """A page of the namespace's datasets with their cached bytes and hit counts."""
        with self._lock:
            datasets = self.core.in_namespace(ns)
        names = [d.name for d in datasets]
        start = 0 if after is None else bisect.bisect_right(names, after)
        rows = [self._dataset(d) for d in datasets[start:start + limit]]
        items, nxt = paging.page(rows, lambda d: d["name"], None, limit)
        if nxt is None and start + limit < len(datasets):
            nxt = items[-1]["name"]
        return {"items": items, "next": nxt}

    def _dataset(self, d: Dataset) -> dict:
        owner = f"{d.namespace}/{d.name}"
        with self._lock:
            per = self.blocks.by_worker(owner)
        counts = self.members.counts(owner)
        return dict(d.public(), cached_bytes=sum(per.values()), cached_by_worker=per,
                    hits=counts.hits, misses=counts.misses)

    def publish_metrics(self) -> None:
        """Per-dataset cached bytes and hit ratio to Ray's metrics (membership round)."""
        if self._metrics is None:
            from ..metrics import MasterMetrics
            self._metrics = MasterMetrics()
        with self._lock:
            datasets = list(self.core.datasets.values())
        rows = []
        for d in datasets:
            owner = f"{d.namespace}/{d.name}"
            counts = self.members.counts(owner)
            rows.append({"namespace": d.namespace, "name": d.name, "hits": counts.hits,
                         "misses": counts.misses,
                         "cached_bytes": self.blocks.cached_bytes(owner)})
        with self._lock:
            workers = len(self.core.workers) + len(self.members.draining)
        capacity = workers * sum(t.quota for t in self.config.tiers)
        self._metrics.publish(rows, capacity, self.blocks.total_bytes())
