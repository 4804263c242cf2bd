"""The tier accounting core: which blocks each tier holds, and where a new block goes.

Pure: no files, no threads, no clocks of its own. The disk shell (store.py) asks
`reserve` where a block may go, writes it, then calls `commit` or `abort`; it removes
the files of the blocks `reserve` chose to evict. Invariants, kept by every method:
  - a tier's `used` (committed + reserved bytes) never exceeds its capacity;
  - a pinned block is never chosen as a victim;
  - a reserved (being written) block is never chosen as a victim.
Illegal moves (committing an unknown key, reserving a held key) raise `StateError`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .policy import Policy


class StateError(Exception):
    """An illegal transition of a block's state."""


@dataclass(slots=True)
class Tier:
    name: str
    capacity: int
    policy: Policy
    used: int = 0
    blocks: set = field(default_factory=set)


@dataclass(slots=True)
class Entry:
    tier: int
    size: int
    state: str = "reserved"    # reserved -> cached
    pinned: bool = False


@dataclass(frozen=True, slots=True)
class Reservation:
    key: str
    tier: int
    evict: tuple[str, ...]     # blocks the shell must delete from `tier` (already unaccounted)


class TierIndex:
    def __init__(self, tiers: Sequence[tuple[str, int]], policy: Callable[[], Policy]):
        self.tiers = [Tier(name, cap, policy()) for name, cap in tiers]
        self.entries: dict[str, Entry] = {}
        self.evictions = 0

    # -- queries ---------------------------------------------------------------
    def __contains__(self, key: str) -> bool:
        e = self.entries.get(key)
        return e is not None and e.state == "cached"

    def tier_of(self, key: str) -> int | None:
        e = self.entries.get(key)
        return e.tier if e is not None and e.state == "cached" else None

    def cached_keys(self) -> list[str]:
        return [k for k, e in self.entries.items() if e.state == "cached"]

    # -- transitions -----------------------------------------------------------
    def reserve(self, key: str, size: int) -> Reservation | None:
        """Room for a new block: the first tier with free space, else the first tier where
        its policy admits it and evicting unpinned blocks frees enough. None: not cached."""
        if key in self.entries:
            raise StateError(f"block {key} is already {self.entries[key].state}")
        for i, t in enumerate(self.tiers):
            if t.used + size <= t.capacity:
                return self._reserve(key, size, i, ())
        for i, t in enumerate(self.tiers):
            if size > t.capacity or not t.policy.admit(key, full=True):
                continue
            need, chosen = t.used + size - t.capacity, []
            for victim in t.policy.victims():
                e = self.entries.get(victim)
                if e is None or e.pinned or e.state != "cached":
                    continue
                chosen.append(victim)
                need -= e.size
                if need <= 0:
                    break
            if need <= 0:
                for victim in chosen:
                    self._drop(victim)
                self.evictions += len(chosen)
                return self._reserve(key, size, i, tuple(chosen))
        return None

    def _reserve(self, key, size, i, evict) -> Reservation:
        self.entries[key] = Entry(i, size)
        self.tiers[i].used += size
        return Reservation(key, i, evict)

    def commit(self, key: str) -> None:
        e = self._get(key, "reserved")
        e.state = "cached"
        t = self.tiers[e.tier]
        t.blocks.add(key)
        t.policy.insert(key)

    def abort(self, key: str) -> None:
        e = self._get(key, "reserved")
        self.tiers[e.tier].used -= e.size
        del self.entries[key]

    def add_existing(self, key: str, tier: int, size: int) -> bool:
        """A block found on disk at start. False (delete it) if it does not fit."""
        if key in self.entries or self.tiers[tier].used + size > self.tiers[tier].capacity:
            return False
        self._reserve(key, size, tier, ())
        self.commit(key)
        return True

    def access(self, key: str) -> None:
        e = self.entries.get(key)
        if e is not None and e.state == "cached":
            self.tiers[e.tier].policy.access(key)

    def remove(self, key: str) -> Entry | None:
        """Forget a cached block (freed, corrupt, expired). Returns what it was."""
        e = self.entries.get(key)
        if e is None or e.state != "cached":
            return None
        self._drop(key)
        return e

    def pin(self, key: str, pinned: bool = True) -> None:
        self._get(key, None).pinned = pinned

    def _drop(self, key: str) -> None:
        e = self.entries.pop(key)
        t = self.tiers[e.tier]
        t.used -= e.size
        t.blocks.discard(key)
        t.policy.remove(key)

    def _get(self, key: str, state: str | None) -> Entry:
        e = self.entries.get(key)
        if e is None or (state is not None and e.state != state):
            raise StateError(f"block {key} is not {state or 'known'}")
        return e
