"""Eviction policies: small classes with a few hooks and no knowledge of bytes or files.

    admit(key, full) -> bool   may a new block enter a full tier by evicting (fill-once:
                               no)
    insert(key)                the block entered the tier (by default: an access)
    access(key)                a hit
    cool(key)                  not wanted again soon (read once this epoch): goes first
    remove(key)                the block left the tier (evicted, freed, expired, moved)
    victims() -> keys          candidates in eviction order (the core skips pinned,
                               unsettled and other tiers' blocks)

The policies here keep an order, not times: none reads a clock. A policy that needs
one takes it as `clock` (`clock()` returns a number), so its tests need no sleeps.
"""
from __future__ import annotations

import abc
import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterable


class Policy(abc.ABC):
    name = "base"
    evicts_on_watermark = True      # may the store evict from a tier above its high mark

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._tick = itertools.count()
        self.clock = clock or (lambda: next(self._tick))

    def admit(self, key: str, full: bool) -> bool:
        return True

    def insert(self, key: str) -> None:
        self.access(key)

    @abc.abstractmethod
    def access(self, key: str) -> None:
        """A hit on `key` (also called once when it is inserted)."""

    @abc.abstractmethod
    def cool(self, key: str) -> None:
        """`key` will not be wanted again soon (a reader says so): it goes before every
        other candidate, until its next access. Unknown keys are ignored."""

    @abc.abstractmethod
    def remove(self, key: str) -> None:
        """`key` left the tier."""

    @abc.abstractmethod
    def victims(self) -> Iterable[str]:
        """Candidates in eviction order (the store skips pinned ones). A live view:
        callers finish iterating before they remove anything."""


class LRU(Policy):
    """Least recently used goes first."""

    name = "lru"

    def __init__(self, clock=None) -> None:
        super().__init__(clock)
        self._order: OrderedDict[str, None] = OrderedDict()

    def access(self, key: str) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def cool(self, key: str) -> None:
        if key in self._order:
            self._order.move_to_end(key, last=False)

    def remove(self, key: str) -> None:
        self._order.pop(key, None)

    def victims(self) -> Iterable[str]:
        return iter(self._order)


class LFU(Policy):
    """Fewest hits goes first; ties go to the least recently used. O(1) per hook:
    one insertion-ordered bucket per hit count."""

    name = "lfu"

    def __init__(self, clock=None) -> None:
        super().__init__(clock)
        self._count: dict[str, int] = {}
        self._buckets: dict[int, OrderedDict[str, None]] = {}

    def access(self, key: str) -> None:
        n = self._count.get(key)
        if n is not None:
            self._unlink(key, n)
        n = n or 0
        self._count[key] = n + 1
        self._buckets.setdefault(n + 1, OrderedDict())[key] = None

    def cool(self, key: str) -> None:
        """Back to no hits, ahead of the others without: its count starts again."""
        n = self._count.get(key)
        if n is None:
            return
        self._unlink(key, n)
        self._count[key] = 0
        first = self._buckets.setdefault(0, OrderedDict())
        first[key] = None
        first.move_to_end(key, last=False)

    def remove(self, key: str) -> None:
        n = self._count.pop(key, None)
        if n is not None:
            self._unlink(key, n)

    def _unlink(self, key: str, n: int) -> None:
        bucket = self._buckets[n]
        del bucket[key]
        if not bucket:
            del self._buckets[n]

    def victims(self) -> Iterable[str]:
        for n in sorted(self._buckets):
            yield from self._buckets[n]


class FillOnce(LRU):
    """Admit until full, then never evict to admit (CoorDL's MinIO-style cache).

    Under random per-epoch access this keeps a fixed C/N of the dataset cached and hit,
    where LRU thrashes. Explicit removals (free, TTL, corruption) still make room.
    """

    name = "fill-once"
    evicts_on_watermark = False

    def admit(self, key: str, full: bool) -> bool:
        return not full


POLICIES = {cls.name: cls for cls in (LRU, LFU, FillOnce)}


def make(name: str, clock=None) -> Policy:
    try:
        return POLICIES[name](clock)
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r}: use {', '.join(POLICIES)}") from None
