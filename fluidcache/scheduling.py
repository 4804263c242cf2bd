"""Data-affinity scheduling (Fluid's cache-affinity webhook, in Ray terms).

    from fluidcache.scheduling import strategy_for, split_by_node
    task.options(scheduling_strategy=strategy_for("fluid://imagenet/train/shard-07")).remote()
    for node, urls in split_by_node(urls).items(): ...   # one task per node's group

Answers come from the master's block reports (no worker is asked): a URL's node is the
one whose worker holds most of its cached bytes. Workers are named by their Ray node id,
so the answer is directly a Ray scheduling target.
"""
from __future__ import annotations

from collections.abc import Iterable

from . import paging
from .api import Client, shared_client
from .client.fs import FluidFileSystem


def locate(urls: Iterable[str], client: Client | None = None) -> dict[str, dict[str, int]]:
    """{url: {node id: cached bytes}} for files or directories (a directory: its files).
    Asked in chunks that each fit in a frame; the master answers as many as fit in its
    reply and is asked again for the rest."""
    client = client or shared_client()
    by_ds: dict[str, list[tuple[str, str]]] = {}
    for url in urls:
        ds, _, path = FluidFileSystem._strip_protocol(url).partition("/")
        by_ds.setdefault(ds, []).append((url, path))
    out: dict[str, dict[str, int]] = {}
    for ds, items in by_ds.items():
        found: dict[str, dict[str, int]] = {}
        for chunk in paging.chunks([p for _, p in items]):
            while chunk:
                reply = client._call("locate", {"ds": ds, "paths": chunk})
                found.update(reply["found"])
                chunk = chunk[max(1, reply["done"]):]
        for url, path in items:
            out[url] = found.get(path, {})
    return out


def node_for(url: str, client: Client | None = None) -> str | None:
    """The Ray node id holding most of `url`'s cached bytes, None if none is cached."""
    per = locate([url], client)[url]
    return max(sorted(per), key=per.get) if per else None


def strategy_for(url: str, soft: bool = True, client: Client | None = None):
    """A NodeAffinitySchedulingStrategy for the node that caches most of `url` (soft by
    default: Ray may run the task elsewhere when that node is busy or gone); "DEFAULT"
    when nothing of it is cached yet."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    node = node_for(url, client)
    return "DEFAULT" if node is None else NodeAffinitySchedulingStrategy(node, soft=soft)


def split_by_node(urls: Iterable[str], client: Client | None = None) -> dict[str | None, list[str]]:
    """Group URLs by the node that caches most of each (None: cached nowhere yet), so a
    job can send each group to its node."""
    groups: dict[str | None, list[str]] = {}
    for url, per in locate(list(urls), client).items():
        node = max(sorted(per), key=per.get) if per else None
        groups.setdefault(node, []).append(url)
    return groups


__all__ = ["locate", "node_for", "strategy_for", "split_by_node"]
