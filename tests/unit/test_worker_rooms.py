"""The worker's rooms without Ray: access, reports and loads with fakes for what they ask."""
from __future__ import annotations

import asyncio

import pytest

from fluidcache import blocks
from fluidcache.errors import AccessDenied, NotFound
from fluidcache.tiering import layout
from fluidcache.worker.access import Access
from fluidcache.worker.loads import Loads
from fluidcache.worker.reports import Reports

RECORD = {"name": "ds", "namespace": "t", "mounts": [["", "file:///tmp", {}]]}


def _access(ttl=60.0, kept=2, tokens=None, datasets=None):
    asked, forgotten = [], []

    async def ask_tokens():
        asked.append("tokens")
        return dict(tokens or {})

    async def ask_dataset(ns, name):
        asked.append((ns, name))
        if (ns, name) not in (datasets or {}):
            raise RuntimeError(f"no dataset {name!r}")
        return dict(datasets[(ns, name)])

    a = Access(ask_tokens, ask_dataset, ttl, kept, lambda ns, n: forgotten.append((ns, n)))
    return a, asked, forgotten


def test_access_tokens_are_asked_for_once_and_checked():
    a, asked, _ = _access(tokens={"t": "secret"})
    assert not a.token_ok("t", "secret")
    asyncio.run(a.authorize("t", "secret"))
    assert a.token_ok("t", "secret") and asked == ["tokens"]
    with pytest.raises(AccessDenied):
        asyncio.run(a.authorize("t", "wrong"))


def test_access_records_are_kept_for_their_ttl_and_forgotten_when_gone():
    a, asked, forgotten = _access(datasets={("t", "ds"): RECORD})
    assert a.held("t", "ds") is None
    rec = asyncio.run(a.dataset("t", "ds"))
    assert rec.dataset.name == "ds" and a.held("t", "ds") is rec
    asyncio.run(a.dataset("t", "ds"))
    assert asked == [("t", "ds")]                 # trusted: not asked again
    with pytest.raises(NotFound):
        asyncio.run(a.dataset("t", "gone"))
    assert forgotten == [("t", "gone")]


def test_access_expired_record_is_asked_again():
    a, asked, _ = _access(ttl=-1.0, datasets={("t", "ds"): RECORD})
    asyncio.run(a.dataset("t", "ds"))
    assert a.held("t", "ds") is None
    asyncio.run(a.dataset("t", "ds"))
    assert asked == [("t", "ds"), ("t", "ds")]


class FakeStore:
    def __init__(self):
        self.listener = None
        self.pins, self.ttls = {}, {}
        self.held = {}

    def pin(self, key, pinned):
        self.pins[key] = pinned

    def set_ttl(self, key, seconds):
        self.ttls[key] = seconds

    def keys(self):
        return list(self.held)

    def describe(self, key):
        from fluidcache.tiering.store import Described
        return Described(self.held[key], 10)


def test_reports_carry_changes_then_a_full_report_when_asked():
    store, sent = FakeStore(), []
    store.held["k1"] = layout.Meta("t/ds", "ab" * 16, 0)

    def send(report):
        sent.append(report)
        return {"version": 3, "resync": len(sent) == 2, "rules": 0}

    rules = {"version": 0, "pin": ["k1"], "ttl": []}
    r = Reports(store, send, lambda: rules, lambda: {}, lambda reply: None, 60.0)
    r._beat()                               # the first report is a full one
    assert sent[0]["full"] and sent[0]["add"][0][:2] == ["k1", "t/ds"]
    assert r.owners == {"k1": "t/ds"} and store.pins == {"k1": True}
    store.listener("add", "k2", layout.Meta("t/ds", "cd" * 16, 1), 5)
    store.listener("remove", "k1", None, 10)
    assert r.report_after() == 2
    r._beat()
    assert sent[1]["add"] == [["k2", "t/ds", "cd" * 16, 1, 5]] and sent[1]["remove"] == ["k1"]
    assert r.owners == {"k2": "t/ds"}
    r._beat()                               # the master asked for a resync
    assert sent[2]["full"]


class FakeSource:
    block_size = 4096

    def __init__(self, uncached=()):
        self.filled, self.uncached = [], set(uncached)

    async def fill(self, ns, r):
        self.filled.append((ns, r.path, r.index, r.fid))
        return b"x" * 100

    def is_cached(self, key):
        return key not in self.uncached


def test_loads_fill_through_the_source_and_count_per_file():
    fid = "ab" * 16
    src = FakeSource(uncached={blocks.block_key(fid, 1, 4096)})
    seqs = iter(range(7, 100))
    loads = Loads(src, lambda: next(seqs), jobs_kept=1)

    async def run():
        loads.start("j", "t", "ds", 2)
        loads.feed("j", [[0, "a", "v", 5000, 0, fid], [0, "a", "v", 5000, 1, fid]])
        await loads.jobs["j"].task
        return loads.jobs["j"].progress()

    p = asyncio.run(run())
    assert p["state"] == "done" and p["done_blocks"] == 1 and p["failed"] == 1
    assert p["by_file"] == {0: 1} and p["seq"] == 7 and "not cached" in p["errors"][0]
    assert sorted(src.filled) == [("t", "a", 0, fid), ("t", "a", 1, fid)]


def test_loads_remember_jobs_kept_finished_jobs():
    loads = Loads(FakeSource(), lambda: 1, jobs_kept=1)

    async def run(job):
        loads.start(job, "t", "ds", 1)
        loads.feed(job, [])
        await loads.jobs[job].task

    asyncio.run(run("a"))
    asyncio.run(run("b"))
    loads.start("c", "t", "ds", 1)
    assert set(loads.jobs) == {"b", "c"}          # the oldest finished job went
