"""The client's view of the cluster: master calls, the cluster map, dataset records.

Owns: the sockets of one client process (a Pool) and the credentials sent with every
call; calls to the master (retried with backoff while it restarts; paged replies read
to the end); the cluster map (workers, block size, membership version), refreshed every
`map_ttl` seconds or when a reply says membership moved; which workers share this
machine (their tier directories can be read directly); dataset records, cached for
`map_ttl` seconds.
Never: read blocks, or see under-store URLs or credentials.
"""
from __future__ import annotations

import sys
import time
import weakref
from typing import NamedTuple

from .. import paging
from ..backoff import Backoff
from ..config import ClientSettings
from ..errors import Unavailable
from ..tiering import layout
from .conn import Pool
from .discovery import Endpoint


class LocalWorker(NamedTuple):
    """A worker on this machine: where it serves, and its tier directories."""
    address: str
    tier_paths: list[str]


class Held(NamedTuple):
    """A dataset record and until when (monotonic seconds) it is trusted."""
    expires: float
    record: dict


class Cluster:
    """One process's connection to one cluster (a new one after a fork: the filesystem
    makes it again). `counters["master_calls"]` counts the calls to the master."""

    def __init__(self, endpoint: Endpoint, settings: ClientSettings | None = None,
                 counters: dict | None = None) -> None:
        self.endpoint = endpoint
        self.settings = settings = settings or ClientSettings.from_env()
        self.pool = Pool(settings.connect_timeout, settings.request_timeout,
                         max_data=settings.max_data)
        # the serving processes' port: one that hangs (stopped, a stalled disk) must not
        # hold a read for request_timeout; past serve_timeout of silence the worker answers
        quick = min(settings.connect_timeout, settings.serve_timeout)
        self.serve_pool = Pool(quick, settings.serve_timeout, max_data=settings.max_data)
        self.counters = counters if counters is not None else {}
        self.counters.setdefault("master_calls", 0)
        self._map: dict | None = None
        self._map_at = 0.0
        self._map_stale = False
        self.local_id: str | None = None               # this node's worker, if one
        self.local_workers: list[LocalWorker] = []    # workers sharing this machine
        self._datasets: dict[str, Held] = {}
        self._finalizer = weakref.finalize(self, _close_pools, self.pool, self.serve_pool)

    def close(self) -> None:
        """Close the sockets now (a cluster that is dropped does so when collected)."""
        self._finalizer()

    # -- calls ------------------------------------------------------------------------
    def call(self, address: str, op: str, args: dict | None = None,
             into: memoryview | None = None, split=None, served: bool = False,
             payload: bytes | memoryview = b""):
        """One request to a worker's data server (`served`: to its serving processes,
        `serve_timeout` per wait), with this client's credentials: (result, payload);
        `into`, `split`: see wire.recv_reply; `payload`: bytes the request carries (a
        write's)."""
        pool = self.serve_pool if served else self.pool
        return pool.call(address, op, args, self.endpoint.namespace, self.endpoint.token,
                         into=into, split=split, payload=payload)

    def master(self, op: str, args: dict | None = None):
        """One master call. While the master is unreachable (restarting: Ray brings it
        back on the same port) retry with backoff for up to `master_retry` seconds."""
        backoff = Backoff(self.settings.master_retry)
        while True:
            try:
                self.counters["master_calls"] += 1
                result, _ = self.pool.call(self.endpoint.master, op, args,
                                           self.endpoint.namespace, self.endpoint.token)
                return result
            except Unavailable:
                if not backoff.wait():
                    raise

    def paged(self, op: str, args: dict | None = None, field: str = "items") -> list:
        """Every item of a paged master reply (paging.py), page after page."""
        return list(paging.pages(lambda after: self.master(op, {**(args or {}),
                                                               "after": after}), field))

    # -- the cluster map --------------------------------------------------------------
    def map(self, refresh: bool = False) -> dict:
        """The cluster map: {"block_size", "version", "workers": [...]}; asked of the
        master when older than `map_ttl` seconds, marked stale, or `refresh`."""
        now = time.monotonic()
        if refresh or self._map is None or self._map_stale or \
                now - self._map_at > self.settings.map_ttl:
            m = self.master("cluster")
            after = m.pop("next", None)
            while after is not None:       # a large cluster's map comes in pages
                more = self.master("cluster", {"after": after})
                m["workers"] += more["workers"]
                after = more.get("next")
            me = layout.machine_id()
            self.local_workers = [LocalWorker(w["address"], w["tier_paths"])
                                  for w in m["workers"] if w.get("machine") == me]
            self.local_id = _local_worker(m["workers"], me)
            self._map, self._map_at, self._map_stale = m, now, False
        return self._map

    def saw_version(self, version: int, m: dict) -> None:
        """A worker's reply named membership version `version`: newer than map `m`'s,
        the map is refreshed before the next read."""
        if version > m["version"]:
            self._map_stale = True

    def dataset(self, name: str) -> dict:
        """A dataset's public record (replicas, selector, routing, mounts, sync), asked
        of the master at most every `map_ttl` seconds."""
        now = time.monotonic()
        held = self._datasets.get(name)
        if held is None or held.expires < now:
            held = self._datasets[name] = Held(now + self.settings.map_ttl,
                                               self.master("dataset_show", {"name": name}))
        return held.record


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


__all__ = ["Cluster", "LocalWorker"]


def _close_pools(*pools: Pool) -> None:
    for pool in pools:
        pool.close()
