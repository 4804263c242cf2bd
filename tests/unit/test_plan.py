"""Data operations planned without a cluster: walking listings, who loads what, du."""
from __future__ import annotations

import pytest

from fluidcache import blocks
from fluidcache.errors import InvalidRequest
from fluidcache.config import parse_duration
from fluidcache.master import plan
from fluidcache.master.core import MasterCore
from fluidcache.master.listing import DIR, FILE, DirListing

BS = 100


def _tree():
    """root: a.bin (250 B, 3 blocks), sub/ (b.bin 100 B, empty.bin 0 B)."""
    dirs = {"": DirListing([("a.bin", FILE, 250, "v1"), ("sub", DIR, 0, "")]),
            "sub": DirListing([("b.bin", FILE, 100, "v2"), ("empty.bin", FILE, 0, "v3")])}

    def listing(d):
        if d in dirs:
            return dirs[d]
        return {"size": 250, "version": "v1", "fid": "f-a.bin"} if d == "a.bin" else None
    return listing


def _fid(path, version):
    return f"f-{path.rsplit('/', 1)[-1]}"


def test_walk_finds_every_file_recursively_and_a_file_as_itself():
    files = sorted(plan.walk(_tree(), _fid, ""))
    assert [(f.path, f.size) for f in files] == [("a.bin", 250), ("sub/b.bin", 100),
                                                  ("sub/empty.bin", 0)]
    assert [f.path for f in plan.walk(_tree(), _fid, "a.bin")] == ["a.bin"]


def test_file_blocks_cover_the_file_exactly():
    f = plan.FileRef("a.bin", 250, "v1", "fa")
    got = plan.file_blocks(f, BS)
    assert [(i, n) for i, _, n in got] == [(0, 100), (1, 100), (2, 50)]
    assert got[1][1] == blocks.block_key("fa", 1, BS)
    assert plan.file_blocks(plan.FileRef("e", 0, "v", "fe"), BS) == []


WORKERS = [{"id": f"w{i}", "labels": {"zone": "a" if i < 2 else "b"}, "resources": []}
           for i in range(3)]


def test_load_plan_sends_each_block_to_its_owners_and_skips_what_they_hold():
    files = list(plan.walk(_tree(), _fid, ""))
    p = plan.plan_load(files, WORKERS, None, 1, BS, lambda k: [])
    assert p.blocks == 4 and p.bytes == 350 and p.cached_bytes == 0
    assert sum(len(v) for v in p.items.values()) == 4
    assert p.blocks_per_file == [3, 1, 0]
    # every block goes to its rendezvous owner, the one clients read from
    from fluidcache import placement
    for wid, items in p.items.items():
        for *_, index, fid in items:
            key = blocks.block_key(fid, index, BS)
            assert placement.owners(key, ["w0", "w1", "w2"], 1) == [wid]
    # held where it belongs: skipped on a re-run
    owner_of = {blocks.block_key(i[5], i[4], BS): w for w, items in p.items.items() for i in items}
    again = plan.plan_load(files, WORKERS, None, 1, BS, lambda k: [owner_of[k]])
    assert again.blocks == 0 and again.items == {} and again.cached_bytes == 350


def test_load_plan_replicas_and_selector():
    files = list(plan.walk(_tree(), _fid, ""))
    p = plan.plan_load(files, WORKERS, None, 2, BS, lambda k: [])
    assert p.blocks == 8                                   # two owners per block
    z = plan.plan_load(files, WORKERS, {"zone": "b"}, 2, BS, lambda k: [])
    assert set(z.items) == {"w2"} and z.blocks == 4        # only the eligible worker
    none = plan.plan_load(files, WORKERS, {"zone": "c"}, 1, BS, lambda k: [])
    assert none.items == {} and none.blocks == 0


def test_usage_counts_a_block_once_however_many_copies():
    files = list(plan.walk(_tree(), _fid, ""))
    a1 = blocks.block_key("f-a.bin", 1, BS)
    b0 = blocks.block_key("f-b.bin", 0, BS)
    held = {a1: ["w0", "w1"], b0: ["w2"]}
    u = plan.usage(files, BS, lambda k: held.get(k, []), per_file=True)
    assert u["files"] == 3 and u["total_bytes"] == 350 and u["cached_bytes"] == 200
    assert u["cached_by_file"] == {"a.bin": 100, "sub/b.bin": 100, "sub/empty.bin": 0}


def test_rules_are_journaled_replayed_and_retired():
    core = MasterCore()
    recs = [{"op": "pin", "ns": "default", "ds": "d", "path": "x"},
            {"op": "pin", "ns": "default", "ds": "d", "path": "y"},
            {"op": "unpin", "ns": "default", "ds": "d", "path": "y"},
            {"op": "ttl", "ns": "t", "ds": "e", "path": "", "deadline": 100.0}]
    for r in recs:
        core.apply(r)
    assert core.rules() == {"pins": [["default", "d", "x"]], "ttls": [["t", "e", "", 100.0]]}
    assert core.rules("t") == {"pins": [], "ttls": [["t", "e", "", 100.0]]}
    again = MasterCore()                  # a restarted master: snapshot, then the same
    again.restore(core.state())
    for r in recs:                        # records replayed over it change nothing
        again.apply(r)
    assert again.rules() == core.rules()
    assert core.expired_ttls(now=150.0, grace=60) == []
    assert core.expired_ttls(now=161.0, grace=60) == [("t", "e", "")]
    v = core.rules_version
    core.apply({"op": "ttl_rm", "ns": "t", "ds": "e", "path": ""})
    assert core.rules()["ttls"] == [] and core.rules_version > v
    core.apply({"op": "dataset_rm", "ns": "default", "name": "d"})
    assert core.rules()["pins"] == []


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("10m", 600),
                                           ("2h", 7200), ("1d", 86400), ("1.5m", 90),
                                           (30, 30), ("never", None)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["-1", "10x", "", "m", -5])
def test_bad_durations_are_refused(bad):
    with pytest.raises(InvalidRequest, match="duration"):
        parse_duration(bad)
