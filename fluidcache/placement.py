"""Which workers own a block: rendezvous (highest-random-weight) hashing.

Every client and worker computes the same owners from the same key and worker list, with
no master call. When a worker joins or leaves, only the keys it owns (or comes to own)
move. Never: do I/O or look at clocks.
"""
from __future__ import annotations

from collections.abc import Sequence

import xxhash


def weight(key: str, worker_id: str) -> int:
    return xxhash.xxh3_64_intdigest(f"{key}|{worker_id}".encode())


def owners(key: str, worker_ids: Sequence[str], replicas: int = 1) -> list[str]:
    """The `replicas` workers that own `key`, best first (all of them, ranked, if fewer)."""
    ranked = sorted(worker_ids, key=lambda w: weight(key, w), reverse=True)
    return ranked[:max(1, replicas)]


def ranked(key: str, worker_ids: Sequence[str]) -> list[str]:
    """Every worker, in the order a reader should try them for `key`."""
    return sorted(worker_ids, key=lambda w: weight(key, w), reverse=True)


def matches(selector: dict, labels: dict, resources) -> bool:
    """Does a node with `labels` and custom `resources` satisfy a dataset's selector?
    Keys are node labels (`key: value`) or `resource:NAME` (the node has that resource)."""
    for key, want in selector.items():
        if key.startswith("resource:"):
            if key[len("resource:"):] not in resources:
                return False
        elif labels.get(key) != want:
            return False
    return True


def route(key: str, workers: Sequence[dict], selector: dict | None = None,
          local: str | None = None) -> list[str]:
    """The order in which a reader asks workers for `key`: the eligible workers (those
    whose node matches the dataset's selector) by rendezvous rank, the first `replicas`
    of them being the owners; then the others, which only read through. With `local`
    (a local-first dataset read on a node that has an eligible worker) that worker
    comes first."""
    ok = [w["id"] for w in workers
          if matches(selector or {}, w.get("labels", {}), w.get("resources", ()))]
    rest = [w["id"] for w in workers if w["id"] not in set(ok)]
    order = ranked(key, ok)
    if local in order:
        order.remove(local)
        order.insert(0, local)
    return order + ranked(key, rest)


def every_worker(cluster_map: dict) -> list[dict]:
    """A cluster map's workers and those draining: out of the routing, but their kept
    files are read from them until they retire."""
    return cluster_map["workers"] + cluster_map.get("draining", [])


def nodes_for_workers(nodes: Sequence[dict], selector: dict | None = None) -> set[str]:
    """The ids of the alive Ray nodes (entries of `ray.nodes()`) that get a worker: those
    matching the deployment's node selector (every alive node when it is empty)."""
    return {n["NodeID"] for n in nodes if n.get("Alive") and matches(
        selector or {}, n.get("Labels") or {}, n.get("Resources") or {})}
