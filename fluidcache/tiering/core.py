"""The tier accounting core: which blocks each tier holds, where a new block goes, and
which blocks move when a tier crosses its high watermark.

Pure: no files, no threads, no clocks of its own (times are passed in). The disk shell
(store.py) carries out what this core decides.

A block's life, and the only legal moves (anything else raises StateError):

    absent --reserve--> reserved --commit--> cached --begin_move--> moving
    reserved --abort--> absent               moving --finish_move--> cached (in dest)
    cached --remove/evict/expire--> absent   moving --cancel_move--> cached (where it was)

Invariants, kept by every method:
  - a tier's `used` (cached + reserved + incoming moves) never exceeds its capacity;
  - a pinned block is never chosen as a victim;
  - a reserved or moving block is never chosen as a victim.
Placement: a new block goes to the first (fastest) tier with room; if none has room, to
the first tier whose policy admits it and where evicting unpinned blocks frees enough.
Marks: a reader may say it wants a block soon (`want`); a block a prefetch brought in is
wanted too. A new block of the same group (a namespace) evicts no block its group wants
and has not read since: without other room it is not cached (a prefetched one is kept
aside by the worker); a high watermark's eviction spares every group's marks. Other
groups' new blocks ignore the marks, and a mark lapses once blocks of any group have
asked room for twice the tier's blocks since it was made: a mark never holds the cache
against another tenant, or for a reader that never comes, for long.
Watermarks: a tier above `high` x capacity is brought down to `low` x capacity; each
victim is demoted to the next tier that has room below its own high mark, else dropped.
A tier whose policy never evicts for admission (fill-once) is exempt.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from .policy import Policy


ANY_GROUP = "\0any"         # _spared: a mark of any group


class StateError(Exception):
    """An illegal transition of a block's state."""


@dataclass(slots=True)
class Tier:
    name: str
    capacity: int
    policy: Policy
    high: float = 0.95
    low: float = 0.7
    used: int = 0
    blocks: set = field(default_factory=set)

    def room(self, size: int, mark: float = 1.0) -> bool:
        return self.used + size <= self.capacity * mark


@dataclass(slots=True)
class Entry:
    tier: int
    size: int
    state: str = "reserved"    # reserved | cached | moving
    pinned: bool = False
    expires: float | None = None
    dest: int | None = None    # while moving
    prefetched: str | None = None   # reserved by a prefetch of this group: wanted once in


@dataclass(frozen=True, slots=True)
class Reservation:
    key: str
    tier: int
    evict: tuple[str, ...]     # blocks the shell must delete from `tier` (already unaccounted)
    sizes: tuple[int, ...] = ()  # their sizes


@dataclass(frozen=True, slots=True)
class Move:
    """What the shell must do: copy `key` from tier `src` to `dst` then `finish_move`,
    or, when `dst` is None, delete its file from `src` (already unaccounted)."""

    key: str
    src: int
    dst: int | None
    reason: str                # "demote" | "promote" | "evict" | "expire"
    size: int = 0


class Held(NamedTuple):
    """A block that is not being written: where its file is and what it takes."""

    tier: int        # the tier its file is in (while moving: the tier it leaves)
    size: int        # bytes on disk
    pinned: bool
    moving: bool


class TierUsage(NamedTuple):
    name: str
    capacity: int
    used: int        # cached + reserved + incoming moves
    blocks: int
    high: float
    low: float


class TierIndex:
    def __init__(self, tiers: Sequence[tuple], policy: Callable[[], Policy]) -> None:
        """`tiers`: (name, capacity) or (name, capacity, high, low), fastest first."""
        self.tiers = [Tier(t[0], t[1], policy(), *t[2:4]) for t in tiers]
        self.entries: dict[str, Entry] = {}
        self.evictions = 0
        self.moves = {"demote": 0, "promote": 0, "expire": 0}
        self._pins: set[str] = set()            # pins that apply when the block arrives
        self._ttls: dict[str, float] = {}
        self.wanted: dict[str, tuple[str, int]] = {}   # key -> (group, fills then)
        self._fills = 0                                 # blocks asked room for, all groups

    # -- queries ---------------------------------------------------------------
    def __contains__(self, key: str) -> bool:
        e = self.entries.get(key)
        return e is not None and e.state != "reserved"

    def tier_of(self, key: str) -> int | None:
        e = self.entries.get(key)
        return e.tier if e is not None and e.state != "reserved" else None

    def known(self, key: str) -> bool:
        """Is the key in any state (being written too)?"""
        return key in self.entries

    def held(self, key: str) -> Held | None:
        """Where a cached or moving block is; None when absent or being written."""
        e = self.entries.get(key)
        if e is None or e.state == "reserved":
            return None
        return Held(e.tier, e.size, e.pinned, e.state == "moving")

    def holds_copy(self, key: str, tier: int) -> bool:
        """Is tier `tier` where the key is, or where it is moving to (any state)?"""
        e = self.entries.get(key)
        return e is not None and tier in (e.tier, e.dest)

    def size_of(self, key: str) -> int:
        """Bytes the key takes on disk in any state (0 if unknown)."""
        e = self.entries.get(key)
        return e.size if e is not None else 0

    def usage(self) -> list[TierUsage]:
        """Each tier's name, capacity, use, block count and watermarks, fastest first."""
        return [TierUsage(t.name, t.capacity, t.used, len(t.blocks), t.high, t.low)
                for t in self.tiers]

    def cached_keys(self) -> list[str]:
        return [k for k, e in self.entries.items() if e.state != "reserved"]

    def over_high(self) -> bool:
        return any(t.used > t.capacity * t.high and t.policy.evicts_on_watermark
                   for t in self.tiers)

    # -- admission ---------------------------------------------------------------
    def reserve(self, key: str, size: int, group: str | None = None,
                prefetched: bool = False) -> Reservation | None:
        """Room for a new block, or None (not cached: no room, or the policy refused, or
        no room but by evicting a block `group` wants). A `prefetched` block is wanted by
        its group once committed."""
        if key in self.entries:
            raise StateError(f"block {key} is already {self.entries[key].state}")
        self._fills += 1
        marked = group if prefetched else None
        for i, t in enumerate(self.tiers):
            if t.room(size):
                return self._reserve(key, size, i, (), (), marked)
        for i, t in enumerate(self.tiers):
            if size > t.capacity or not t.policy.admit(key, full=True):
                continue
            chosen = self._victims(i, t.used + size - t.capacity, group)
            if chosen is not None:
                sizes = tuple(self.entries[v].size for v in chosen)
                for victim in chosen:
                    self._drop(victim)
                self.evictions += len(chosen)
                return self._reserve(key, size, i, tuple(chosen), sizes, marked)
        return None

    def _victims(self, i: int, need: int, group: str | None = None) -> list[str] | None:
        """Unpinned, settled blocks of tier i, in policy order, that free `need` bytes
        (none that `group` wants)."""
        chosen: list[str] = []
        for victim in self.tiers[i].policy.victims():
            if need <= 0:
                break
            e = self.entries.get(victim)
            if e is None or e.pinned or e.state != "cached" or e.tier != i or \
                    self._spared(victim, group):
                continue
            chosen.append(victim)
            need -= e.size
        return chosen if need <= 0 else None

    def _reserve(self, key, size, i, evict, sizes=(), prefetched=None) -> Reservation:
        self.entries[key] = Entry(i, size, prefetched=prefetched)
        self.tiers[i].used += size
        return Reservation(key, i, evict, sizes)

    def commit(self, key: str) -> None:
        e = self._get(key, "reserved")
        e.state = "cached"
        e.pinned = key in self._pins
        e.expires = self._ttls.pop(key, None)
        t = self.tiers[e.tier]
        t.blocks.add(key)
        t.policy.insert(key)
        if e.prefetched is not None:     # fetched for a reader who comes soon
            self._mark(key, e.prefetched)

    def abort(self, key: str) -> None:
        e = self._get(key, "reserved")
        self.tiers[e.tier].used -= e.size
        del self.entries[key]

    def add_existing(self, key: str, tier: int, size: int) -> bool:
        """A block found on disk at start. False (delete it) if it does not fit."""
        if key in self.entries or not self.tiers[tier].room(size):
            return False
        self._reserve(key, size, tier, ())
        self.commit(key)
        return True

    # -- use, pins, TTLs ---------------------------------------------------------
    def access(self, key: str) -> None:
        e = self.entries.get(key)
        if e is not None and e.state != "reserved":
            self.tiers[e.tier].policy.access(key)
            self.wanted.pop(key, None)

    def want(self, key: str, group: str) -> bool:
        """A reader of `group` will read `key` soon: kept as a hit keeps it, and no new
        block of `group` evicts it until it is read or cooled (or the mark lapses).
        False if no settled block has that key."""
        e = self.entries.get(key)
        if e is None or e.state == "reserved":
            return False
        self.tiers[e.tier].policy.access(key)
        self._mark(key, group)
        return True

    def _mark(self, key: str, group: str) -> None:
        self.wanted[key] = (group, self._fills)

    def _spared(self, key: str, group: str | None) -> bool:
        """Is `key` marked by `group` (ANY_GROUP: by any), the mark not lapsed (a lapsed
        one is dropped)?"""
        mark = self.wanted.get(key)
        if group is None or mark is None or group not in (mark[0], ANY_GROUP):
            return False
        e = self.entries[key]
        if self._fills - mark[1] > 2 * max(1, len(self.tiers[e.tier].blocks)):
            del self.wanted[key]
            return False
        return True

    def cool(self, key: str) -> bool:
        """`key` is not wanted again soon: first in its tier's eviction order. False if
        no settled block has that key."""
        e = self.entries.get(key)
        if e is None or e.state == "reserved":
            return False
        self.tiers[e.tier].policy.cool(key)
        self.wanted.pop(key, None)
        return True

    def remove(self, key: str) -> Entry | None:
        """Forget a settled block (freed, corrupt, expired). Returns what it was; a block
        that is being written or moved is left alone (None)."""
        e = self.entries.get(key)
        if e is None or e.state != "cached":
            return None
        self._drop(key)
        return e

    def pin(self, key: str, pinned: bool = True) -> None:
        """Pin (never evicted) or unpin; a pin on an absent block applies when it arrives."""
        (self._pins.add if pinned else self._pins.discard)(key)
        e = self.entries.get(key)
        if e is not None:
            e.pinned = pinned

    def set_ttl(self, key: str, expires: float | None) -> None:
        e = self.entries.get(key)
        if e is not None and e.state != "reserved":
            e.expires = expires
        elif expires is None:
            self._ttls.pop(key, None)
        else:
            self._ttls[key] = expires

    # -- maintenance (the shell runs it off the read path) -----------------------
    def plan(self, now: float) -> list[Move]:
        """Expire what is due, then bring every tier above its high mark down to its
        low mark. Drops are done at once; demotions begin and need finish_move."""
        moves = []
        for key in [k for k, e in self.entries.items()
                    if e.expires is not None and e.expires <= now and e.state == "cached"]:
            e = self.entries[key]
            self._drop(key)
            self.moves["expire"] += 1
            moves.append(Move(key, e.tier, None, "expire", e.size))
        for i, t in enumerate(self.tiers):
            if t.used <= t.capacity * t.high or not t.policy.evicts_on_watermark:
                continue
            need = t.used - int(t.capacity * t.low)
            for victim in list(self._victims(i, need, ANY_GROUP)
                               or self._victims_partial(i, need, ANY_GROUP)):
                e = self.entries[victim]
                dst = next((j for j in range(i + 1, len(self.tiers))
                            if self.tiers[j].room(e.size, self.tiers[j].high)), None)
                if dst is None:
                    self._drop(victim)
                    self.evictions += 1
                    moves.append(Move(victim, i, None, "evict", e.size))
                else:
                    self._begin(victim, dst)
                    moves.append(Move(victim, i, dst, "demote", e.size))
        return moves

    def _victims_partial(self, i: int, need: int, group: str | None = None) -> list[str]:
        """As many victims as there are when not enough can be freed (pins, and marks of
        `group`, hold the rest)."""
        out = []
        for victim in self.tiers[i].policy.victims():
            e = self.entries.get(victim)
            if e is not None and not e.pinned and e.state == "cached" and e.tier == i \
                    and not self._spared(victim, group):
                out.append(victim)
                need -= e.size
                if need <= 0:
                    break
        return out

    def plan_promote(self, key: str) -> Move | None:
        """Move a block read from a lower tier up to the first tier with room below its
        high mark (never evicting for it)."""
        e = self.entries.get(key)
        if e is None or e.state != "cached" or e.tier == 0:
            return None
        dst = next((j for j in range(e.tier) if self.tiers[j].room(e.size, self.tiers[j].high)),
                   None)
        if dst is None:
            return None
        src = e.tier
        self._begin(key, dst)
        return Move(key, src, dst, "promote", self.entries[key].size)

    def _begin(self, key: str, dst: int) -> None:
        e = self._get(key, "cached")
        e.state, e.dest = "moving", dst
        self.tiers[dst].used += e.size

    def finish_move(self, key: str, reason: str = "demote") -> None:
        e = self._get(key, "moving")
        src, dst = self.tiers[e.tier], self.tiers[e.dest]
        src.used -= e.size
        src.blocks.discard(key)
        src.policy.remove(key)
        e.tier, e.dest, e.state = e.dest, None, "cached"
        dst.blocks.add(key)
        dst.policy.insert(key)
        self.moves[reason] = self.moves.get(reason, 0) + 1

    def cancel_move(self, key: str) -> None:
        e = self._get(key, "moving")
        self.tiers[e.dest].used -= e.size
        e.dest, e.state = None, "cached"

    # -- internals -----------------------------------------------------------------
    def _drop(self, key: str) -> None:
        e = self.entries.pop(key)
        t = self.tiers[e.tier]
        t.used -= e.size
        t.blocks.discard(key)
        t.policy.remove(key)
        self.wanted.pop(key, None)

    def _get(self, key: str, state: str | None) -> Entry:
        e = self.entries.get(key)
        if e is None or (state is not None and e.state != state):
            raise StateError(f"block {key} is not {state or 'known'}")
        return e
