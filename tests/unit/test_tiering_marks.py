"""Reuse marks in the tier accounting core (fluidcache.tiering.core): a reader's word that
it wants a block soon (`want`), or not (`cool`), and blocks a prefetch brought in."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fluidcache.blocks import block_key, file_id
from fluidcache.tiering.core import TierIndex
from fluidcache.tiering.policy import make

KEYS = [block_key(file_id("s3://bucket/marks.bin", "etag-1"), i, 4 << 20) for i in range(64)]
A, B, C, D, E = KEYS[:5]


def index(cap: int, policy: str = "lru", high: float = 1.0, low: float = 1.0) -> TierIndex:
    return TierIndex([("t0", cap, high, low)], lambda: make(policy))


def cached(ix: TierIndex, key: str, size: int, group: str | None = None,
           prefetched: bool = False):
    res = ix.reserve(key, size, group, prefetched)
    assert res is not None
    ix.commit(key)
    return res


def test_a_groups_new_block_spares_what_the_group_wants_and_others_do_not():
    ix = index(90)
    for k in (A, B, C):
        cached(ix, k, 30)
    assert ix.want(A, "ns1")
    ix.access(B)
    ix.access(C)                                    # A first in LRU order, and wanted
    assert cached(ix, D, 30, "ns1").evict == (B,)   # spared by its group's fill
    assert cached(ix, E, 30, "ns2").evict == (A,)   # another group ignores the mark


def test_no_room_but_by_evicting_wanted_blocks_is_no_room():
    ix = index(60)
    for k in (A, B):
        cached(ix, k, 30)
        assert ix.want(k, "g")
    assert ix.reserve(C, 30, "g") is None and C not in ix.entries
    assert ix.evictions == 0 and set(ix.cached_keys()) == {A, B}
    assert not ix.want(C, "g")                      # not held: no mark


def test_a_prefetched_block_is_wanted_until_it_is_read():
    ix = index(60)
    cached(ix, A, 30, "g", prefetched=True)
    cached(ix, B, 30)
    ix.access(B)                                    # A first in LRU order
    assert cached(ix, C, 30, "g").evict == (B,)     # A: prefetched, not read yet
    ix.access(A)                                    # read: the mark is gone
    ix.access(C)
    assert cached(ix, D, 30, "g").evict == (A,)


def test_a_cooled_block_goes_first_and_loses_its_mark():
    ix = index(90)
    for k in (A, B, C):
        cached(ix, k, 30)
    assert ix.want(C, "g")
    assert ix.cool(C) and not ix.cool(D)            # D: not held
    assert list(ix.tiers[0].policy.victims())[0] == C
    assert cached(ix, D, 30, "g").evict == (C,)


def test_a_high_watermark_spares_marks_of_every_group():
    ix = index(100, high=0.9, low=0.5)
    for k in (A, B, C, D):
        cached(ix, k, 25)
    ix.want(A, "g1")
    ix.want(B, "g2")
    ix.access(C)
    ix.access(D)                                    # A, B first in LRU order
    assert {m.key for m in ix.plan(0.0)} == {C, D}
    assert set(ix.cached_keys()) == {A, B}


def test_a_mark_lapses_once_blocks_asked_room_for_twice_the_tiers_blocks():
    ix = index(60)
    cached(ix, A, 30)
    cached(ix, B, 30)
    ix.want(A, "g")
    ix.access(B)                                    # A first in LRU order
    fills, evicted = 0, []
    for k in KEYS[5:20]:
        res = cached(ix, k, 30, "g")
        fills += 1
        evicted += res.evict
        if A in evicted:
            break
        ix.access(k)
    # two blocks in the tier: the mark holds for 4 of the group's fills, not more
    assert A in evicted and fills == 5, (fills, evicted)


def test_marks_are_forgotten_with_their_blocks():
    ix = index(60)
    cached(ix, A, 30)
    ix.want(A, "g")
    ix.remove(A)
    assert ix.wanted == {}
    cached(ix, A, 30)
    cached(ix, B, 30)
    ix.access(B)
    assert cached(ix, C, 30, "g").evict == (A,)     # back without its old mark


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["fill_g", "fill_h", "prefetch_g", "want",
                                               "access", "cool"]),
                              st.integers(0, 11)), max_size=80))
def test_a_groups_fills_never_evict_its_live_marks_and_others_may(ops):
    """Random fills of two groups against marks of one: a fill of "g" never evicts a
    mark of "g" that holds; it is refused only when nothing else could make room."""
    ix = index(100)                                 # five blocks of 20
    for op, i in ops:
        k = KEYS[i]
        if op in ("fill_g", "fill_h", "prefetch_g"):
            if k in ix.entries:
                continue
            group = "h" if op == "fill_h" else "g"
            live = {v for v, (g, n) in ix.wanted.items() if g == group and
                    ix._fills + 1 - n <= 2 * max(1, len(ix.tiers[0].blocks))}
            res = ix.reserve(k, 20, group, op == "prefetch_g")
            if res is None:                         # full of marks that hold
                assert live and len(ix.tiers[0].blocks) - len(live) == 0
            else:
                assert not set(res.evict) & live
                ix.commit(k)
                assert (k in ix.wanted) == (op == "prefetch_g")
        elif op == "want":
            assert ix.want(k, "g") == (k in ix)
        elif op == "access":
            ix.access(k)
            assert k not in ix.wanted
        else:
            ix.cool(k)
            assert k not in ix.wanted
        assert set(ix.wanted) <= set(ix.cached_keys())
