"""PyTorch: a map-style dataset of files, read through fluid:// (or any fsspec filesystem).

    ds = FluidDataset("fluid://imagenet/train", transform=decode)
    loader = DataLoader(ds, batch_size=64, num_workers=8)

It lists once (one metadata call per directory) in the parent process; each DataLoader
worker uses its own copy of the filesystem, which opens its own sockets after the fork.
A DataLoader with a batch size hands each worker process a whole batch of the sampler's
indices (`__getitems__`): their files are read at once, in one batch request per cache
worker (`cat_ranges`), so each process keeps a batch of reads in flight, and no more (a
batch's memory, nothing left behind at the end of an epoch).
Importing this module does not import torch; the dataset only needs `__len__` and
`__getitem__`.

Samplers: `CacheAwareDistributedSampler` (each DDP rank reads what its node caches) and
`SubstitutingSampler` (sampler.py: within a bounded window, cached samples first while
the misses are prefetched through the cache).

Model loading: `load(url, **torch_load_kwargs)` (`torch.load`) and
`load_safetensors(url)` read the whole checkpoint with parallel block reads first.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence

import fsspec

from .sampler import SubstitutingSampler, epoch_order, ranks


class FluidDataset:
    def __init__(self, url_or_paths: str | Sequence[str], transform: Callable | None = None,
                 filesystem: fsspec.AbstractFileSystem | None = None) -> None:
        self.fs = filesystem or fsspec.filesystem("fluid")
        if isinstance(url_or_paths, str):
            root = self.fs._strip_protocol(url_or_paths)
            self.paths = sorted(p for p, e in self.fs.find(root, detail=True).items()
                                if e["type"] == "file")
        else:
            self.paths = [self.fs._strip_protocol(p) for p in url_or_paths]
        self.transform = transform
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.paths)

    def _own_fs(self):
        if self._pid != os.getpid():
            # a forked worker: rebuild the filesystem from its arguments, so filesystems
            # that are not fork-safe (s3fs, fsspec #835) get fresh sockets and loops too
            self.fs, self._pid = pickle.loads(pickle.dumps(self.fs)), os.getpid()
        return self.fs

    def __getitem__(self, i: int):
        data = self._own_fs().cat_file(self.paths[i])
        return self.transform(data) if self.transform else data

    def __getitems__(self, indices: Sequence[int]) -> list:
        """The samples of a batch of indices, their files read at once (the DataLoader
        calls this with each batch the sampler gives a worker process)."""
        paths = [self.paths[i] for i in indices]
        n = len(paths)
        got = self._own_fs().cat_ranges(paths, [None] * n, [None] * n, on_error="raise")
        return [self.transform(d) for d in got] if self.transform else list(got)


def assign(order: Sequence[int], homes: Sequence[str | None], rank_nodes: Sequence[str | None],
           per_rank: int) -> list[list[int]]:
    """Split one epoch's `order` (len == per_rank * ranks) into each rank's samples: a
    sample goes to a rank on its home node (the node caching it) while that rank has
    room, round-robin among the node's ranks; the rest fill the ranks with room, in
    order. Every rank gets exactly `per_rank`; the ranks together get `order` exactly.
    Pure and deterministic: every rank computes the same split from the same inputs."""
    if len(order) != per_rank * len(rank_nodes):
        raise ValueError("order must hold per_rank samples for every rank")
    out: list[list[int]] = [[] for _ in rank_nodes]
    ranks_of: dict[str, list[int]] = {}
    for r, node in enumerate(rank_nodes):
        if node is not None:
            ranks_of.setdefault(node, []).append(r)
    turn = {node: 0 for node in ranks_of}
    rest = []
    for i in order:
        home = homes[i]
        rs = ranks_of.get(home) if home is not None else None
        for k in range(len(rs) if rs else 0):
            r = rs[(turn[home] + k) % len(rs)]
            if len(out[r]) < per_rank:
                out[r].append(i)
                turn[home] = (turn[home] + k + 1) % len(rs)
                break
        else:
            rest.append(i)
    r = 0
    for i in rest:
        while len(out[r]) >= per_rank:
            r += 1
        out[r].append(i)
    return out


class CacheAwareDistributedSampler:
    """A DistributedSampler for DDP that hands each rank the samples cached on its node
    first, while every epoch stays one seeded permutation split across the ranks (each
    sample once; with `drop_last=False` the last few repeat to even out the ranks, as in
    torch's DistributedSampler).

    `rank_nodes`: the Ray node id of every rank's process (default: gathered with
    torch.distributed when it is initialized, else all on this node). The samples' home
    nodes come from the master's block reports (`refresh()`, a collective under
    torch.distributed: rank 0 asks, everyone gets the same answer).
    """

    def __init__(self, dataset: FluidDataset, num_replicas: int | None = None,
                 rank: int | None = None, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, rank_nodes: Sequence[str | None] | None = None,
                 homes: Sequence[str | None] | None = None) -> None:
        dist = _dist()
        self.num_replicas, self.rank = ranks(num_replicas, rank)
        self.dataset, self.shuffle, self.seed, self.drop_last = dataset, shuffle, seed, drop_last
        self.epoch = 0
        n = len(dataset)
        self.per_rank = n // self.num_replicas if drop_last else -(-n // self.num_replicas)
        if rank_nodes is None:
            me = _my_node()
            if dist:
                rank_nodes = [None] * self.num_replicas
                dist.all_gather_object(rank_nodes, me)
            else:
                rank_nodes = [me] * self.num_replicas
        self.rank_nodes = list(rank_nodes)
        self.homes = list(homes) if homes is not None else self.refresh()

    def refresh(self) -> list[str | None]:
        """Ask the master where each sample is cached now (the node with most of it)."""
        dist = _dist()
        homes = None
        if not dist or dist.get_rank() == 0:
            from ..scheduling import locate
            urls = [f"fluid://{p}" for p in self.dataset.paths]
            found = locate(urls)
            homes = [max(sorted(found[u]), key=found[u].get) if found[u] else None
                     for u in urls]
        if dist:
            box = [homes]
            dist.broadcast_object_list(box, src=0)
            homes = box[0]
        self.homes = homes
        return homes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        return epoch_order(len(self.dataset), self.seed + self.epoch, self.shuffle,
                           self.per_rank * self.num_replicas)

    def split(self) -> list[list[int]]:
        return assign(self._order(), self.homes, self.rank_nodes, self.per_rank)

    def __iter__(self):
        return iter(self.split()[self.rank])

    def __len__(self) -> int:
        return self.per_rank

    def local_share(self) -> float:
        """Of this rank's samples this epoch, the share cached on its own node."""
        mine = self.split()[self.rank]
        node = self.rank_nodes[self.rank]
        return sum(1 for i in mine if self.homes[i] == node) / max(1, len(mine))


def _dist():
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    return dist if dist.is_available() and dist.is_initialized() else None


def _my_node() -> str | None:
    """This process's Ray node id, or (outside Ray) the only worker on this machine."""
    import sys
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ray.get_runtime_context().get_node_id()
    try:
        from ..api import shared_client
        from ..tiering.layout import machine_id
        mine = [w["node_id"] for w in shared_client()._cluster.map()["workers"]
                if w.get("machine") == machine_id()]
        return mine[0] if len(mine) == 1 else None
    except Exception:  # noqa: BLE001 - no cluster to ask: no locality
        return None


# -- model loading ------------------------------------------------------------------------
def read_file(url: str, filesystem: fsspec.AbstractFileSystem | None = None) -> bytes:
    """A whole file through the cache, its blocks read at once (local ones from the tier
    files, the others from their workers concurrently, each straight into its place in
    the one result)."""
    fs = filesystem or fsspec.filesystem("fluid")
    return fs.cat_file(url)


def load(url: str, filesystem: fsspec.AbstractFileSystem | None = None, **kwargs):
    """`torch.load` of a checkpoint at `url` (read whole first, blocks in parallel);
    `kwargs` go to `torch.load` (`map_location`, ...). `weights_only` is True unless
    given (a checkpoint in a store is data: no code runs from it, whatever torch's own
    default). The file and what torch builds from it are in memory at once; for a
    checkpoint larger than memory, `torch.load(fs.open(url, "rb"), mmap=...)` reads as it
    parses."""
    import io

    import torch
    kwargs.setdefault("weights_only", True)
    return torch.load(io.BytesIO(read_file(url, filesystem)), **kwargs)


def load_safetensors(url: str, filesystem: fsspec.AbstractFileSystem | None = None,
                     device: str = "cpu") -> dict:
    """The tensors of a safetensors file at `url` ({name: tensor} on `device`), the file
    read whole first with parallel block reads (then the file's bytes and the tensors
    are in memory at once; each tensor's CPU copy is dropped as it moves to `device`).
    Needs the `safetensors` package."""
    from safetensors.torch import load as from_bytes
    tensors = from_bytes(read_file(url, filesystem))
    if device != "cpu":
        for name in list(tensors):
            tensors[name] = tensors[name].to(device)
    return tensors


__all__ = ["CacheAwareDistributedSampler", "FluidDataset", "SubstitutingSampler", "assign",
           "load", "load_safetensors", "read_file"]
