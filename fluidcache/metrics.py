"""Cache metrics through `ray.util.metrics` (Ray's Prometheus endpoint and dashboard).

Names start with `fluidcache_`. A worker exports, tagged with its node: hits and misses
(per dataset), bytes served by path (`remote`: over its data server; `short_circuit`:
read by local clients from its tier files, as they report) and by tier, under-store bytes, fetches
and fetch latency (a histogram), evictions, and each tier's capacity and use. The master
exports per-dataset cached bytes and hit ratio. Counters are pushed as deltas of the
worker's own counters once per heartbeat: nothing on the read path.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)
LATENCY_BUCKETS = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]


class WorkerMetrics:
    def __init__(self, node_id: str) -> None:
        from ray.util import metrics as m
        self.node = node_id
        tags = ("node",)
        self.hits = m.Counter("fluidcache_hits", "block reads served from the cache",
                              tag_keys=tags + ("dataset",))
        self.misses = m.Counter("fluidcache_misses", "block reads fetched from the under store",
                                tag_keys=tags + ("dataset",))
        self.served = m.Counter("fluidcache_bytes_served", "bytes read from this worker's cache",
                                tag_keys=tags + ("path",))
        self.by_tier = m.Counter("fluidcache_tier_read_bytes",
                                 "bytes the worker read from each tier to serve them",
                                 tag_keys=tags + ("tier",))
        self.ufs = m.Counter("fluidcache_under_store_bytes", "bytes fetched from under stores",
                             tag_keys=tags)
        self.fetches = m.Counter("fluidcache_under_store_fetches", "under-store block fetches",
                                 tag_keys=tags)
        self.latency = m.Histogram("fluidcache_under_store_latency_seconds",
                                   "time to fetch one block from the under store",
                                   boundaries=LATENCY_BUCKETS, tag_keys=tags)
        self.evictions = m.Counter("fluidcache_evictions", "blocks evicted", tag_keys=tags)
        self.capacity = m.Gauge("fluidcache_tier_capacity_bytes", "tier quota",
                                tag_keys=tags + ("tier",))
        self.used = m.Gauge("fluidcache_tier_used_bytes", "bytes used in a tier",
                            tag_keys=tags + ("tier",))
        self.blocks = m.Gauge("fluidcache_tier_blocks", "blocks held in a tier",
                              tag_keys=tags + ("tier",))
        self._last: dict = {}

    def _delta(self, key, value: int) -> int:
        d = value - self._last.get(key, 0)
        self._last[key] = value
        return max(0, d)

    def publish(self, counters: dict, by_dataset: dict, tiers: list[dict], evictions: int,
                short_circuit_bytes: int, tier_reads: dict | None = None) -> None:
        """Push what changed since the last call (called once per heartbeat)."""
        t = {"node": self.node}
        for owner, (h, m) in list(by_dataset.items()):
            dt = dict(t, dataset=owner)
            if d := self._delta(("h", owner), h):
                self.hits.inc(d, tags=dt)
            if d := self._delta(("m", owner), m):
                self.misses.inc(d, tags=dt)
        for path, value in (("remote", counters["bytes_served"]),
                            ("short_circuit", short_circuit_bytes)):
            if d := self._delta(("s", path), value):
                self.served.inc(d, tags=dict(t, path=path))
        for tier, value in (tier_reads or {}).items():
            if d := self._delta(("t", tier), value):
                self.by_tier.inc(d, tags=dict(t, tier=tier))
        if d := self._delta("ufs", counters["ufs_bytes_read"]):
            self.ufs.inc(d, tags=t)
        if d := self._delta("fetch", counters["ufs_fetches"]):
            self.fetches.inc(d, tags=t)
        if d := self._delta("evict", evictions):
            self.evictions.inc(d, tags=t)
        for tier in tiers:
            tt = dict(t, tier=tier["name"])
            self.capacity.set(tier["capacity"], tags=tt)
            self.used.set(tier["used"], tags=tt)
            self.blocks.set(tier["blocks"], tags=tt)

    def observe_fetch(self, seconds: float) -> None:
        self.latency.observe(seconds, tags={"node": self.node})


class MasterMetrics:
    def __init__(self) -> None:
        from ray.util import metrics as m
        self.cached = m.Gauge("fluidcache_dataset_cached_bytes",
                              "bytes of a dataset cached (every copy)", tag_keys=("dataset",))
        self.ratio = m.Gauge("fluidcache_dataset_hit_ratio",
                             "hits / (hits + misses) of a dataset's reads", tag_keys=("dataset",))
        self.used = m.Gauge("fluidcache_dataset_cache_used_ratio",
                            "a dataset's cached bytes over the cluster's cache capacity",
                            tag_keys=("dataset",))
        self.cluster_used = m.Gauge("fluidcache_cluster_cache_used_ratio",
                                    "cached bytes over the cluster's cache capacity (the "
                                    "tier quotas of its workers): what to scale on")

    def publish(self, datasets: list[dict], capacity: int = 0, used: int = 0) -> None:
        """`capacity`: the cache's bytes over all workers; `used`: bytes cached in all."""
        if capacity:
            self.cluster_used.set(used / capacity)
        for d in datasets:
            tags = {"dataset": f"{d['namespace']}/{d['name']}"}
            self.cached.set(d["cached_bytes"], tags=tags)
            if capacity:
                self.used.set(d["cached_bytes"] / capacity, tags=tags)
            total = d.get("hits", 0) + d.get("misses", 0)
            if total:
                self.ratio.set(d["hits"] / total, tags=tags)
