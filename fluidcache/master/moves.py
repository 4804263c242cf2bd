"""Which cached blocks move when workers come and go: the rebalance plan.

A block belongs on its owners: the first `r` eligible workers of its rendezvous rank
(placement.py), the same order clients read in. When a worker joins it becomes the owner
of ~1/N of the blocks, which it does not hold; when one drains, its blocks' owners are
others. A plan copies each block to the owners that lack it, from a worker that holds
it, and frees the copies no owner needs once every owner has one.

`r` keeps the copies there are: max(the dataset's replicas, the copies routable
workers hold now; a draining worker's copy is not counted), at most the eligible
workers. So a dataset loaded with `--replicas 2` keeps two, and a block whose second
copy died with its node gets it back. A local-first dataset is never moved: its blocks
are where their readers are.

Pure: holdings and workers come in as data; no Ray, clocks or I/O.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from .. import placement


class Holding(NamedTuple):
    key: str                  # the block's key (hex)
    owner: str                # "namespace/dataset"
    size: int
    holders: tuple[str, ...]  # the workers holding it (draining ones too)


class Move(NamedTuple):
    key: str
    owner: str
    size: int
    src: str                  # a holder to copy it from
    dest: str                 # the owner that lacks it
    free: tuple[str, ...]     # holders to free once every owner holds it
    copies: int = 1           # the copies the block keeps (its owners are the first ones)


class DatasetPlace(NamedTuple):
    replicas: int
    selector: dict
    local_first: bool = False     # each node caches what it reads: never moved


def eligible(place: DatasetPlace, workers: Sequence[dict]) -> list[str]:
    """The ids of the workers that may cache a dataset (its selector)."""
    return [w["id"] for w in workers
            if placement.matches(place.selector or {}, w.get("labels") or {},
                                 w.get("resources") or ())]


def surplus(key: str, place: DatasetPlace, workers: Sequence[dict], copies: int,
            holders: set[str], leaving: Sequence[str]) -> list[str]:
    """Of `leaving` (holders a move meant to free), those that may go now: not among
    the block's owners by the current workers, and every owner holds it."""
    ids = eligible(place, workers)
    want = set(placement.owners(key, ids, min(len(ids), copies))) if ids else set()
    if not want or not want <= holders:
        return []
    return [w for w in leaving if w not in want]


def plan(holdings: Iterable[Holding], workers: Sequence[dict],
         datasets: Mapping[str, DatasetPlace]) -> list[Move]:
    """The moves that put every held block on its owners among `workers` (the routable
    ones: a draining worker is a source, never an owner). A block of a dataset not in
    `datasets` (removed) is not moved."""
    by_owner: dict[str, list[str]] = {}
    out: list[Move] = []
    routable = {w["id"] for w in workers}
    for h in holdings:
        place = datasets.get(h.owner)
        if place is None or place.local_first or not h.holders:
            continue
        ids = by_owner.get(h.owner)
        if ids is None:
            ids = by_owner[h.owner] = eligible(place, workers)
        if not ids:
            continue              # no worker may cache it now: it stays where it is
        held = set(h.holders)
        r = min(len(ids), max(place.replicas, len(held & routable)))
        want = placement.owners(h.key, ids, r)
        lacking = [w for w in want if w not in held]
        if not lacking:
            continue
        # copy from a holder that is leaving (or not an owner) first: it is freed after
        leaving = sorted(held - set(want), key=lambda w: (w in routable, w))
        staying = sorted(held & set(want))
        sources = leaving + staying
        free = tuple(leaving)
        for i, dest in enumerate(lacking):
            out.append(Move(h.key, h.owner, h.size, sources[i % len(sources)], dest, free, r))
    return out


def summary(moves: Sequence[Move]) -> dict:
    """Blocks and bytes a plan moves, per destination."""
    per: dict[str, list[int]] = {}
    for m in moves:
        row = per.setdefault(m.dest, [0, 0])
        row[0] += 1
        row[1] += m.size
    return {"blocks": len(moves), "bytes": sum(m.size for m in moves),
            "by_dest": {d: {"blocks": b, "bytes": n} for d, (b, n) in sorted(per.items())}}
