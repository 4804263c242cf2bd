"""A state-machine test of BlockStore over two small tiers on real (temporary) dirs.

Rules: put (one or several), get (one, or an epoch of all), remove, pin/unpin, restart (a
new BlockStore on the same dirs) and one synchronous maintenance round (demotion above
the high watermark, promotion of blocks read from the lower tier). The model is the bytes
of each block the store should hold. After every step: per-tier `used` <= capacity and equal to the
bytes on disk, the files on disk are exactly the blocks the index holds, every held block
reads back as the bytes that were put, and no pinned block has been evicted.

A block key names its bytes (it hashes file id and index), so a put of a key the store
already holds is a no-op: the model keeps the first bytes.
"""
from __future__ import annotations

import os
import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine, initialize, invariant, precondition, rule,
)

from fluidcache.blocks import block_key, file_id
from fluidcache.config import TierConfig
from fluidcache.tiering import layout
from fluidcache.tiering.store import BlockStore

KEYS = [block_key(file_id("s3://bucket/f", "v"), i, 4 << 20) for i in range(12)]
T = layout.TRAILER.size


def disk_blocks(path: str) -> dict[str, int]:
    """key -> bytes on disk of every block file; fails on a leftover temporary."""
    out = {}
    for root, _, names in os.walk(path):
        for n in names:
            assert not n.startswith(layout.TMP_PREFIX), f"leftover temporary {n}"
            if n.endswith(layout.SUFFIX):
                out[n[:-len(layout.SUFFIX)]] = os.path.getsize(os.path.join(root, n))
    return out


class BlockStoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="fc-state-")
        self.model: dict[str, bytes] = {}
        self.pinned: set[str] = set()

    @initialize(q0=st.integers(50, 300), q1=st.integers(50, 400),
                high=st.sampled_from([0.6, 0.8, 0.95, 1.0]), low=st.sampled_from([0.3, 0.5]),
                eviction=st.sampled_from(["lru", "lfu", "fill-once"]))
    def start(self, q0, q1, high, low, eviction):
        self.cfg = [TierConfig("MEM", os.path.join(self.root, "mem"), q0, high, low),
                    TierConfig("SSD", os.path.join(self.root, "ssd"), q1, high, low)]
        self.eviction = eviction
        self.store = BlockStore(self.cfg, eviction)

    def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------------
    def held(self) -> set[str]:
        return set(self.store.index.cached_keys())

    def settle(self, before: set[str], may_evict: bool) -> None:
        """Drop from the model what the store evicted; pinned blocks must not be among it."""
        gone = (before & set(self.model)) - self.held()
        if not may_evict:
            assert not gone, f"blocks vanished: {gone}"
        assert not gone & self.pinned, f"pinned blocks evicted: {gone & self.pinned}"
        for k in gone:
            del self.model[k]

    def could_take(self, size: int) -> bool:
        """Whether the store's placement rules find room for a new block of `size`."""
        ix = self.store.index
        if any(t.used + size <= t.capacity for t in ix.tiers):
            return True
        if self.eviction == "fill-once":
            return False
        for i, t in enumerate(ix.tiers):
            freeable = sum(e.size for e in ix.entries.values()
                           if e.tier == i and e.state == "cached" and not e.pinned)
            if size <= t.capacity and t.capacity - t.used + freeable >= size:
                return True
        return False

    # -- rules -------------------------------------------------------------------------
    @rule(key=st.sampled_from(KEYS), data=st.binary(max_size=150),
          pin=st.sampled_from([False, False, True]))
    def put(self, key, data, pin):
        self._put(key, data)
        if pin and key in self.model:           # a pinned block under later pressure
            assert self.store.pin(key) is True
            self.pinned.add(key)

    @rule(items=st.lists(st.tuples(st.sampled_from(KEYS), st.binary(max_size=150)),
                         min_size=2, max_size=8))
    def put_many(self, items):
        """Several puts in a row: builds the pressure that makes evictions happen."""
        for key, data in items:
            self._put(key, data)

    def _put(self, key, data):
        before, evictions = self.held(), self.store.evictions
        expect = True if key in before else self.could_take(len(data) + T)
        assert self.store.put(key, data) is expect
        if expect and key not in self.model:
            self.model[key] = data
        self.settle(before, may_evict=True)
        assert self.store.evictions - evictions == len(before - self.held())
        assert (key in self.store) is expect

    @rule(key=st.sampled_from(KEYS))
    def get(self, key):
        before = self.held()
        got = self.store.get(key)
        if key in self.model:
            assert got is not None and bytes(got) == self.model[key]
        else:
            assert got is None
        self.settle(before, may_evict=False)

    @rule()
    def read_epoch(self):
        """Read every held block once, as a training epoch does (feeds promotion)."""
        before = self.held()
        for k, data in sorted(self.model.items()):
            got = self.store.get(k)
            assert got is not None and bytes(got) == data
        self.settle(before, may_evict=False)

    @rule(key=st.sampled_from(KEYS))
    def remove(self, key):
        assert self.store.remove(key) is (key in self.model)
        self.model.pop(key, None)
        self.pinned.discard(key)
        assert key not in self.store

    @precondition(lambda self: self.model)
    @rule(data=st.data(), pinned=st.booleans())
    def pin(self, data, pinned):
        key = data.draw(st.sampled_from(sorted(self.model)))
        assert self.store.pin(key, pinned) is True
        (self.pinned.add if pinned else self.pinned.discard)(key)

    @rule()
    def restart(self):
        where = {k: self.store.index.tier_of(k) for k in self.model}
        used = [t.used for t in self.store.index.tiers]
        self.store = BlockStore(self.cfg, self.eviction)
        assert self.held() == set(self.model)          # every block comes back ...
        assert {k: self.store.index.tier_of(k) for k in self.model} == where   # ... in place
        assert [t.used for t in self.store.index.tiers] == used
        self.pinned.clear()                            # pins live in memory only

    @rule()
    def maintain(self):
        """One synchronous round of what the maintenance thread does (no thread here)."""
        before = self.held()
        self.store.maintain()
        self.settle(before, may_evict=True)
        for t in self.store.index.tiers:
            if t.policy.evicts_on_watermark and t.used > t.capacity * t.high:
                # only pinned blocks may hold a tier above its high mark after a round
                assert all(self.store.index.entries[k].pinned for k in t.blocks)

    # -- invariants --------------------------------------------------------------------
    @invariant()
    def accounting_matches_disk(self):
        ix = self.store.index
        for i, t in enumerate(ix.tiers):
            assert 0 <= t.used <= t.capacity
            on_disk = disk_blocks(self.store.paths[i])
            assert set(on_disk) == t.blocks == {k for k, e in ix.entries.items() if e.tier == i}
            assert sum(on_disk.values()) == t.used
        assert all(e.state == "cached" for e in ix.entries.values())

    @invariant()
    def held_blocks_read_back(self):
        assert self.held() == set(self.model)
        for k, data in self.model.items():
            raw = layout.read_block(self.store.paths[self.store.index.tier_of(k)], k)
            assert raw is not None and bytes(raw) == data

    @invariant()
    def pins_are_kept(self):
        assert self.pinned <= self.held()
        assert all(self.store.index.entries[k].pinned for k in self.pinned)


BlockStoreMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40,
                                               deadline=None)
TestBlockStoreMachine = BlockStoreMachine.TestCase
