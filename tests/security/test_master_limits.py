"""The master's limits, in-process (no Ray) over a local dataset: walks are bounded per
request, `du` pages cover every file, a tenant's datasets and concurrent requests are
capped, loads that have nothing to do end at once."""
from __future__ import annotations

import math

import pytest

from fluidcache.errors import InvalidRequest, Unavailable
from fluidcache.master.actor import Master
from fluidcache.dataset import parse_sync
from fluidcache.master.tenants import Gate


@pytest.fixture()
def master(tmp_path):
    for d in ("a", "b", "c"):
        (tmp_path / "data" / d).mkdir(parents=True)
        for i in range(7):
            (tmp_path / "data" / d / f"f{i}").write_bytes(b"x")
    m = Master({"tiers": [{"medium": "MEM", "path": str(tmp_path / "mem"), "quota": "1MiB"}],
                "max_walk_files": 10, "tenant_datasets": 2})
    m.ops["dataset_create"]("default", {"name": "d",
                                        "mounts": [["/", f"file://{tmp_path/'data'}"]]})
    yield m
    m.shutdown()


def test_a_walk_over_the_budget_is_refused_and_locate_answers_what_fits(master):
    with pytest.raises(InvalidRequest, match="more than 10 files"):
        master.ops["du"]("default", {"ds": "d", "p": ""})                 # 21 files
    assert master.ops["du"]("default", {"ds": "d", "p": "a"})["files"] == 7
    got = master.ops["locate"]("default", {"ds": "d", "paths": ["a", "a", "b", "c"]})
    assert got["done"] == 2 and list(got["found"]) == ["a"]         # a twice, then b: over


def test_du_pages_cover_every_file_in_order(master):
    master.dataops.config = master.config.__class__.from_dict(dict(master.config.to_dict(),
                                                                   max_walk_files=100))
    seen, after = [], None
    while True:
        page = master.ops["du"]("default", {"ds": "d", "p": "", "per_file": True,
                                            "after": after, "limit": 4})
        seen += list(page["cached_by_file"])
        after = page["next"]
        if after is None:
            break
    assert seen == sorted(f"{d}/f{i}" for d in "abc" for i in range(7))


def test_a_load_with_nothing_to_do_is_done_at_once(master):
    master.ops["dataset_create"]("default", {"name": "empty",
                                             "mounts": [["/", "reference://"]],
                                             "options": {"fo": {"version": 1, "refs": {}}}})
    for _ in range(70):                     # more than max_load_jobs: none stays running
        assert master.ops["load"]("default", {"ds": "empty", "p": ""})["state"] == "done"


def test_a_tenant_has_a_share_of_datasets_and_of_the_masters_threads(master, tmp_path):
    master.ops["namespace_create"]("default", {"name": "team", "allow": ["https://h.example/x"]})
    for i in range(2):
        master.core.datasets[("team", f"t{i}")] = master.core.dataset("default", "d")
    with pytest.raises(InvalidRequest, match="datasets already"):
        master.ops["dataset_create"]("team", {"name": "more",
                                              "mounts": [["/", "https://h.example/x"]]})
    gate = Gate(each=2, tenants=3)
    gate.enter("a")
    gate.enter("a")
    with pytest.raises(Unavailable):
        gate.enter("a")                     # its own share is used up
    gate.enter("b")
    with pytest.raises(Unavailable):
        gate.enter("c")                     # all tenants' share is used up
    for _ in range(10):
        gate.enter("default")               # the admin passes
    gate.leave("a")
    gate.enter("c")


def test_a_sync_interval_must_be_finite():
    for bad in (math.nan, math.inf, -5):
        with pytest.raises(InvalidRequest):
            parse_sync(bad)
