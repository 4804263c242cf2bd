"""What the filesystem knows of names: listings and infos asked of the master, kept in
the metadata cache.

Owns: the master calls for metadata (ls in pages, never mixing two epochs; info; the
epoch check every `metadata_check` seconds) and putting their answers into the
MetadataCache (metadata.py), each listing for the dataset's sync interval, at most
`listing_ttl` seconds.
Never: read bytes, or keep metadata anywhere but the MetadataCache.
"""
from __future__ import annotations

from collections.abc import Callable

from ..errors import NotFound
from .cluster import Cluster
from .metadata import MetadataCache


class Listings:
    def __init__(self, meta: MetadataCache, cluster: Callable[[], Cluster],
                 listing_ttl: float) -> None:
        """`cluster()`: this process's Cluster (the filesystem makes it lazily)."""
        self.meta, self.cluster, self.listing_ttl = meta, cluster, listing_ttl

    def fresh(self, dataset: str) -> None:
        """Before cached metadata of `dataset` is trusted: if no reply has said its epoch
        for `metadata_check` seconds, ask (a moved epoch drops its listings). A dataset
        that takes writes is asked every time: a file closed by any client is seen by
        every other at its next open (one small master call per open or info)."""
        if not dataset:
            return
        if self.meta.due(dataset) or (self.meta.epoch(dataset) is not None and
                                      self._writable(dataset)):
            self.meta.saw(dataset, self.cluster().master("epoch", {"ds": dataset})["epoch"])

    def _writable(self, dataset: str) -> bool:
        return self.cluster().dataset(dataset).get("write_mode", "read-only") != "read-only"

    def listing(self, path: str, refresh: bool = False) -> list[dict]:
        """The entries of directory (or file) `path` (stripped); "" lists the datasets."""
        ds, _, rest = path.partition("/")
        if not refresh:
            self.fresh(ds)
            hit = self.meta.listing(path)
            if hit is not None:
                return hit
        epoch = None
        cluster = self.cluster()
        if not ds:
            entries = [{"name": d["name"], "size": 0, "type": "directory"}
                       for d in cluster.paged("datasets")]
        else:
            for _ in range(3):   # pages of up to 2,000 entries; one directory, few calls
                entries, after, epoch = [], None, None
                while True:
                    page = cluster.master("ls", {"ds": ds, "p": rest, "after": after,
                                                 "refresh": refresh and after is None})
                    self.meta.saw(ds, page["epoch"])
                    if epoch not in (None, page["epoch"]):
                        break       # listed again between pages: start over, never mix
                    epoch = page["epoch"]
                    entries += page["entries"]
                    after = page["next"]
                    if after is None:
                        break
                if after is None:
                    break
        self.meta.put(path, entries, self._ttl(ds), epoch)
        return entries

    def _ttl(self, dataset: str) -> float:
        """How long a listing stays fresh here: the dataset's sync policy, else ours."""
        if not dataset:
            return self.listing_ttl
        sync = self.cluster().dataset(dataset).get("sync_seconds")
        if sync is None:
            return self.listing_ttl
        return float("inf") if sync < 0 else min(sync, self.listing_ttl)

    def info(self, path: str, refresh: bool = False) -> dict:
        """The entry of `path` (stripped): from a cached listing when one holds it."""
        ds, _, rest = path.partition("/")
        if not rest:
            if not ds:
                return {"name": "", "size": 0, "type": "directory"}
            if not refresh and ds not in {e["name"] for e in self.listing("")}:
                raise NotFound(f"fluid://{ds}: no such dataset")
            return {"name": ds, "size": 0, "type": "directory"}
        parent = path.rsplit("/", 1)[0]
        if not refresh:
            self.fresh(ds)
            e, listed = self.meta.entry(parent, path)
            if not listed and self.meta.missed(parent) > 2:
                # a job reading several files of one directory: list it once (one call
                # per directory) instead of one call per file
                self.listing(parent)
                e, listed = self.meta.entry(parent, path)
            if e is not None:
                return e            # a listed file's info costs no RPC
        reply = self.cluster().master("info", {"ds": ds, "p": rest,
                                               "refresh": bool(refresh)})
        self.meta.saw(ds, reply["epoch"])
        return reply["entry"]


__all__ = ["Listings"]
