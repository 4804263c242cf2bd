"""The stage (worker/stage.py): prefetched blocks kept until read, bounded, per tenant."""
from __future__ import annotations

from fluidcache.worker.stage import ENTRY_COST, Stage


def test_taken_once_peeked_freely_dropped_when_freed_or_removed():
    s = Stage(10_000)
    s.put("k1", "default/d", b"x" * 100)
    assert s.peek("k1") == b"x" * 100 and "k1" in s         # a hint leaves it
    assert s.take("k1") == b"x" * 100 and s.take("k1") is None   # a read takes it
    s.put("k2", "default/d", b"y")
    s.put("k3", "default/e", b"z")
    s.drop(["k2", "nope"])
    s.drop_owner("default/e")
    assert "k2" not in s and "k3" not in s
    s.put("k4", "default/d", b"")                            # nothing empty is kept
    assert "k4" not in s


def test_a_tenant_gets_half_and_pushes_out_its_own_first():
    size = 1000
    s = Stage(4 * (size + ENTRY_COST))
    s.put("a1", "default/d", b"a" * size)
    for i in range(5):
        s.put(f"t{i}", "team/d", b"t" * size)
    assert "a1" in s                       # the tenant evicted its own, not the admin's
    assert sum(f"t{i}" in s for i in range(5)) == 2
    for i in range(4):
        s.put(f"b{i}", "default/d", b"b" * size)
    assert sum(k in s for k in ["a1", "t3", "t4", "b0", "b1", "b2", "b3"]) == 4
