"""The master's kept set without Ray or a store (master/pending.py): the order of
uploads of one path, removals racing uploads, restarts of workers and of the master."""
from __future__ import annotations

import threading

import pytest

from fluidcache.dataset import Dataset, MountSpec
from fluidcache.errors import AlreadyExists, NotFound, UnderStoreError
from fluidcache.master.pending import Pending


class Core:
    incarnation = "i1"

    def __init__(self):
        self.ds = Dataset("d", "t", (MountSpec("", "s3://b/p"),), write_mode="async-through",
                          uid="u1")
        self.workers = {"w1": {}, "w2": {}}

    def dataset(self, ns, name):
        if (ns, name) != ("t", "d"):
            raise NotFound(f"no dataset {name}")
        return self.ds


class Listings:
    def __init__(self):
        self.rows = {}

    def held_entry(self, ds, path):
        return self.rows.get(path)

    def put_file(self, ds, path, row):
        self.rows[path] = {"type": "file", "version": row[2], "fid": row[2]}
        return self.rows[path]


class Writes:
    def __init__(self):
        self.calls, self.fail = [], None

    def shown(self, ds, path, old):
        self.calls.append(("shown", path))

    def wrote(self, ns, name, path, uid):
        self.calls.append(("wrote", path))
        if self.fail:
            raise self.fail
        return {"name": f"{name}/{path}"}

    def relist(self, ds, path):
        self.calls.append(("relist", path))

    def remove_uploaded(self, ns, name, path):
        self.calls.append(("remove_uploaded", path))


def _room():
    core, drops = Core(), []
    p = Pending(core, threading.RLock(), Listings(), Writes(),
                lambda holder, ids: drops.append((holder, ids)))
    return p, core, drops


def _rec(fid, path="a.bin", closed=1.0, size=10):
    return {"id": fid, "ns": "t", "ds": "d", "uid": "u1", "path": path, "size": size,
            "closed": closed, "mode": "async-through"}


def test_the_last_close_is_uploaded_last_never_an_older_one():
    p, core, drops = _room()
    p.add(_rec("a1"), "w1", False, False)
    assert p.begin("t", "d", "u1", "a.bin", "a1") == {"state": "go"}     # a1 uploads
    p.add(_rec("b2", closed=2.0), "w2", False, False)                    # b2 closes
    assert drops == []                     # a1 is being uploaded: not dropped, it ends
    assert p.begin("t", "d", "u1", "a.bin", "b2") == {"state": "wait"}
    assert p.done("t", "d", "u1", "a.bin", "a1") == {"entry": None}     # not listed
    assert p.begin("t", "d", "u1", "a.bin", "b2") == {"state": "go"}
    assert p.done("t", "d", "u1", "a.bin", "b2")["entry"] == {"name": "d/a.bin"}
    assert p.waiting("t", "d", "") == (0, 0)


def test_a_turn_is_not_held_by_a_worker_that_left_nor_by_a_dropped_file():
    p, core, drops = _room()
    p.add(_rec("a1"), "w1", False, False)
    assert p.begin("t", "d", "u1", "a.bin", "a1")["state"] == "go"
    p.add(_rec("b2", closed=2.0), "w2", False, False)
    del core.workers["w1"]                                               # w1 left
    assert p.begin("t", "d", "u1", "a.bin", "b2")["state"] == "go"
    # w1 comes back (same id) and tells its older close again: superseded, turn gone
    core.workers["w1"] = {}
    assert p.add(_rec("a1"), "w1", False, True)["state"] == "superseded"
    assert p.done("t", "d", "u1", "a.bin", "b2")["entry"] == {"name": "d/a.bin"}


def test_a_removal_during_an_upload_removes_what_it_uploaded():
    p, core, drops = _room()
    ds = core.ds
    p.add(_rec("a1"), "w1", False, False)
    assert p.begin("t", "d", "u1", "a.bin", "a1")["state"] == "go"
    assert p.take(ds, "a.bin").id == "a1"
    assert drops == []                                   # uploading: its end decides
    assert p.busy(ds, "a.bin")                           # a copy onto it must wait
    assert p.done("t", "d", "u1", "a.bin", "a1") == {"entry": None}
    assert ("remove_uploaded", "a.bin") in p.writes.calls
    assert not p.busy(ds, "a.bin")


def test_a_removed_file_whose_worker_restarted_mid_upload_is_removed_from_the_store():
    p, core, drops = _room()
    p.add(_rec("a1"), "w1", False, False)
    assert p.begin("t", "d", "u1", "a.bin", "a1")["state"] == "go"
    p.take(core.ds, "a.bin")                             # rm while w1 uploads; w1 dies
    assert p.add(_rec("a1"), "w1", False, True)["state"] == "superseded"   # w1 is back
    assert ("remove_uploaded", "a.bin") in p.writes.calls
    assert not p.busy(core.ds, "a.bin")


def test_a_failed_listing_after_an_upload_keeps_the_file_kept():
    p, core, drops = _room()
    p.add(_rec("a1"), "w1", False, False)
    p.begin("t", "d", "u1", "a.bin", "a1")
    p.writes.fail = UnderStoreError("HEAD failed")
    with pytest.raises(UnderStoreError):
        p.done("t", "d", "u1", "a.bin", "a1")
    assert p.kept(core.ds, "a.bin").id == "a1"           # still listed as kept
    p.writes.fail = None
    assert p.done("t", "d", "u1", "a.bin", "a1")["entry"] == {"name": "d/a.bin"}
    p.add(_rec("c3", path="c.bin"), "w1", False, False)  # removed from the store meanwhile
    p.writes.fail = NotFound("gone")
    assert p.done("t", "d", "u1", "c.bin", "c3") == {"entry": None}
    assert p.kept(core.ds, "c.bin") is None and ("relist", "c.bin") in p.writes.calls


def test_restarts_exclusive_writes_and_other_datasets():
    p, core, drops = _room()
    p.add(_rec("a1"), "w1", False, False)
    with pytest.raises(AlreadyExists):
        p.add(_rec("x9", closed=3.0), "w2", True, False)   # "xb" over a kept file
    p.add(_rec("b2", closed=2.0), "w2", False, False)      # replaces a1: w1 drops it
    assert drops == [("w1", ["a1"])]
    assert p.add(_rec("a1"), "w1", False, True)["state"] == "superseded"
    assert p.begin("t", "d", "u1", "a.bin", "zz")["state"] == "unknown"   # tell us again
    with pytest.raises(NotFound):
        p.add(dict(_rec("q1"), ds="other"), "w1", False, False)
    with pytest.raises(NotFound):                          # another incarnation
        p.add(dict(_rec("q2"), uid="u0"), "w1", False, False)
    assert p.totals("t")["pending_files"] == 1 and p.totals("x")["pending_files"] == 0
