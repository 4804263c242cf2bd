"""The rebalance plan (master/moves.py): which blocks move where when workers come and go."""
from __future__ import annotations

from fluidcache import placement
from fluidcache.master.moves import DatasetPlace, Holding, plan, summary, surplus

W = [{"id": w} for w in ("a", "b", "c")]
KEYS = [f"{i:032x}" for i in range(600)]


def held_by_owner(workers, replicas=1, owner="ns/d"):
    """Every key on its owners among `workers`, as a steady cluster holds them."""
    ids = [w["id"] for w in workers]
    return [Holding(k, owner, 100, tuple(placement.owners(k, ids, replicas))) for k in KEYS]


def test_a_steady_cluster_moves_nothing():
    assert plan(held_by_owner(W), W, {"ns/d": DatasetPlace(1, {})}) == []


def test_a_joining_worker_gets_its_share_from_the_previous_owners():
    before = held_by_owner(W[:2])
    moves = plan(before, W, {"ns/d": DatasetPlace(1, {})})
    now = {k: placement.owners(k, ["a", "b", "c"])[0] for k in KEYS}
    assert {m.key for m in moves} == {k for k, o in now.items() if o == "c"}
    assert 150 < len(moves) < 250                         # ~1/3 of the blocks, not all
    for m in moves:
        assert m.dest == "c" and m.src in ("a", "b") and m.free == (m.src,)
    assert summary(moves)["by_dest"] == {"c": {"blocks": len(moves), "bytes": 100 * len(moves)}}


def test_a_draining_worker_hands_every_block_on():
    held = held_by_owner(W)
    routable = [w for w in W if w["id"] != "b"]          # b drains: not routable
    moves = plan(held, routable, {"ns/d": DatasetPlace(1, {})})
    assert {m.key for m in moves} == {h.key for h in held if h.holders == ("b",)}
    assert all(m.src == "b" and m.dest in ("a", "c") and m.free == ("b",) for m in moves)
    ids = ["a", "c"]
    assert all(m.dest == placement.owners(m.key, ids)[0] for m in moves)


def test_copies_are_kept_a_lost_replica_comes_back():
    held = held_by_owner(W, replicas=2)
    survivors = [h._replace(holders=tuple(w for w in h.holders if w != "c")) for h in held]
    routable = W[:2]
    moves = plan(survivors, routable, {"ns/d": DatasetPlace(2, {})})
    lost_one = [h for h in held if "c" in h.holders]
    assert {m.key for m in moves} == {h.key for h in lost_one}
    for m in moves:                  # copied from the survivor to the other, nothing freed
        assert {m.src, m.dest} == {"a", "b"} and m.free == ()
    # a dataset of 1 replica loaded with 2 keeps 2 (the copies there are)
    assert {m.key for m in plan(survivors, routable, {"ns/d": DatasetPlace(1, {})})} == set()


def test_selectors_hold_removed_datasets_stay():
    labelled = [{"id": "a", "labels": {"cache": "yes"}}, {"id": "b"},
                {"id": "c", "labels": {"cache": "yes"}}]
    held = [Holding(k, "ns/sel", 10, ("a",)) for k in KEYS]
    moves = plan(held, labelled, {"ns/sel": DatasetPlace(1, {"cache": "yes"})})
    assert moves and all(m.dest == "c" for m in moves)    # never the unlabelled b
    assert plan(held, labelled, {}) == []                 # a removed dataset: not moved
    assert plan(held, [{"id": "b"}], {"ns/sel": DatasetPlace(1, {"cache": "yes"})}) == []


def test_copies_are_counted_on_routable_workers_and_local_first_stays():
    held = [Holding(k, "ns/d", 10, ("a", "b")) for k in KEYS[:50]]      # b drains
    moves = plan(held, [{"id": "a"}, {"id": "c"}], {"ns/d": DatasetPlace(1, {})})
    assert all(m.copies == 1 and m.src == "b" for m in moves)   # not 2: b is going
    lf = [Holding(k, "ns/lf", 10, ("a",)) for k in KEYS]
    assert plan(lf, W, {"ns/lf": DatasetPlace(1, {}, local_first=True)}) == []


def test_a_holder_is_freed_only_when_every_owner_holds_the_block():
    key = KEYS[0]
    place = DatasetPlace(1, {})
    owner = placement.owners(key, ["a", "b", "c"])[0]
    other = next(w for w in "abc" if w != owner)
    assert surplus(key, place, W, 1, {other}, [other]) == []             # owner lacks it
    assert surplus(key, place, W, 1, {other, owner}, [other]) == [other]
    assert surplus(key, place, W, 1, {other, owner}, [owner]) == []      # never an owner
    two = placement.owners(key, ["a", "b", "c"], 2)
    assert surplus(key, place, W, 2, {owner}, [two[1]]) == []            # 2 copies kept
