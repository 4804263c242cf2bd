"""Reads straight from the under store, for a client that brought its own options.

When no worker answers at all, a filesystem given `under_store_options` reads the block
from the under store itself instead of waiting for the cluster (counted as `direct`).
Owns: finding the mount a path lies under (the dataset's public record, resolved as the
master resolves it: `Dataset.resolve`), opening that mount once per process with the
user's options for its protocol, and a version-checked range read of one block piece.
Never: use the cluster's credentials (the record has redacted URLs and no options), or
call back into the filesystem.
"""
from __future__ import annotations

from .. import blocks
from ..dataset import Dataset, MountSpec, normalize
from ..errors import Unavailable
from ..wire import BlockRead
from .cluster import Cluster


class DirectReader:
    def __init__(self, cluster: Cluster, options: dict[str, dict]) -> None:
        """`options`: the user's under-store options per protocol (`{"s3": {...}}`)."""
        self.cluster, self.options = cluster, options
        self._mounts: dict[tuple[str, str], object] = {}    # (point, url) -> Mount

    def read(self, req: BlockRead) -> bytes:
        """Bytes of one block piece, read from the under store at the listed version.

        Raises NotFound when the path is under no mount of the dataset, Unavailable when
        there are no options for the mount's protocol, StaleVersion when the file is no
        longer at that version."""
        from ..understore import Mount
        record = self.cluster.dataset(req.dataset)
        ds = Dataset(record["name"], record["namespace"],
                     tuple(MountSpec(normalize(p), u) for p, u in record["mounts"].items()))
        spec, rel = ds.resolve(req.path)
        proto = spec.url.split("://", 1)[0] if "://" in spec.url else "file"
        opts = self.options.get(proto)
        if opts is None:
            raise Unavailable(f"no worker answered, and no under-store options for {proto}")
        mount = self._mounts.get((spec.point, spec.url))
        if mount is None:
            mount = self._mounts[(spec.point, spec.url)] = Mount(spec.url, opts)
        bs = req.block_size
        start = req.index * bs + req.offset
        length = req.length if req.length >= 0 else \
            blocks.block_length(req.size, bs, req.index) - req.offset
        return mount.read_range(rel, req.version, start, start + length, size=req.size).data


__all__ = ["DirectReader"]
