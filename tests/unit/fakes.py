"""Fakes shared by the client's unit tests (no Ray, no sockets)."""
from __future__ import annotations

from fluidcache.config import ClientSettings


class OneWorkerCluster:
    """What a BlockReader asks of its cluster, for a cluster of one remote worker with
    blocks of `bs` bytes; subclasses say what the worker answers (`call`)."""

    def __init__(self, bs: int, budget: int, fanout: int = 4) -> None:
        self.settings = ClientSettings(readahead_budget=budget, fanout=fanout)
        self.counters: dict = {}
        self.local_workers, self.local_id = [], None
        self.bs = bs

    def map(self, refresh=False):
        return {"block_size": self.bs, "version": 0,
                "workers": [{"id": "w1", "address": "127.0.0.1:1"}]}

    def dataset(self, name):
        return {"replicas": 1}

    def saw_version(self, version, m):
        pass

    def close(self):
        pass
