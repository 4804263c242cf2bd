"""The master's block map: reports in, per-dataset and per-file bytes out."""
from __future__ import annotations

import tracemalloc

from hypothesis import given, settings, strategies as st

from fluidcache.blocks import block_key, file_id
from fluidcache.master.blockmap import BlockMap

F1, F2 = file_id("s3://b/1", "e"), file_id("s3://b/2", "e")


def _add(fid, index, size, owner="default/d"):
    return [block_key(fid, index, 4 << 20), owner, fid, index, size]


def test_adds_removes_and_full_reports():
    m = BlockMap()
    m.apply("w1", {"add": [_add(F1, 0, 100), _add(F1, 1, 50), _add(F2, 0, 7, "team/x")]})
    m.apply("w2", {"add": [_add(F1, 0, 100)]})
    assert m.cached_bytes("default/d") == 250 and m.cached_bytes("team/x") == 7
    assert m.by_worker("default/d") == {"w1": 150, "w2": 100}
    assert m.file_by_worker("default/d", F1) == {"w1": 150, "w2": 100}
    m.apply("w1", {"remove": [block_key(F1, 1, 4 << 20)]})
    assert m.by_worker("default/d") == {"w1": 100, "w2": 100}
    m.apply("w1", {"add": [_add(F1, 0, 100)]})                  # a repeated add is idempotent
    assert m.cached_bytes("default/d") == 200
    m.apply("w1", {"full": True, "add": [_add(F2, 0, 7, "team/x")]})   # w1 now holds only this
    assert m.by_worker("default/d") == {"w2": 100} and m.cached_bytes("team/x") == 7
    m.drop_worker("w2")
    assert m.cached_bytes("default/d") == 0 and m.file_by_worker("default/d", F1) == {}
    m.drop_owner("team/x")
    assert m.cached_bytes("team/x") == 0 and m.blocks("w1") == 0


@given(st.lists(st.tuples(st.sampled_from(["w1", "w2", "w3"]), st.booleans(),
                          st.integers(0, 20), st.integers(1, 1000)), max_size=120))
@settings(max_examples=200, deadline=None)
def test_totals_match_a_plain_model(ops):
    m, model = BlockMap(), {}
    for worker, add, index, size in ops:
        key = block_key(F1, index, 4 << 20)
        if add:
            m.apply(worker, {"add": [_add(F1, index, size)]})
            model[(worker, key)] = size
        else:
            m.apply(worker, {"remove": [key]})
            model.pop((worker, key), None)
    per = {}
    for (w, _), size in model.items():
        per[w] = per.get(w, 0) + size
    assert m.by_worker("default/d") == per
    assert m.cached_bytes("default/d") == sum(model.values())


def test_memory_per_block_is_small():
    m = BlockMap()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    fids = [file_id(f"s3://b/{i}", "e") for i in range(2000)]
    m.apply("w1", {"add": [_add(f, i, 4 << 20) for f in fids for i in range(10)]})
    per_block = (tracemalloc.get_traced_memory()[0] - base) / 20000
    tracemalloc.stop()
    assert per_block < 200, per_block


def test_holders_and_keys_of_a_dataset():
    m = BlockMap()
    m.apply("w1", {"add": [_add(F1, 0, 100), _add(F2, 0, 7, "team/x")]})
    m.apply("w2", {"add": [_add(F1, 0, 100), _add(F1, 1, 5)]})
    k0 = block_key(F1, 0, 4 << 20)
    assert sorted(m.holders(k0)) == ["w1", "w2"]
    assert m.holders(block_key(F2, 9, 4 << 20)) == []
    assert m.keys_of_owner("team/x") == {"w1": [block_key(F2, 0, 4 << 20)]}
    per = m.keys_of_owner("default/d")
    assert per["w1"] == [k0] and sorted(per["w2"]) == sorted([k0, block_key(F1, 1, 4 << 20)])
