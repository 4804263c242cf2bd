"""Metadata freshness without a cluster: the master's listings and epochs over a local
mount, and the client's metadata cache with an injected clock."""
from __future__ import annotations

import threading

import pytest

from fluidcache.client.metadata import MetadataCache, older
from fluidcache.errors import NotFound
from fluidcache.master.core import MasterCore
from fluidcache.master.listing import FILE, DirListing
from fluidcache.master.listings import Listings
from fluidcache.dataset import Dataset, MountSpec


def test_a_changed_listing_moves_the_epoch_and_an_unchanged_one_does_not():
    core = MasterCore(incarnation="r1")
    a = DirListing([("x", FILE, 1, "e:1")])
    e0 = core.epoch("ns", "ds")
    assert not core.store_listing("ns", "ds", "", a, 10.0, 1.0)   # first: nothing to drop
    assert not core.store_listing("ns", "ds", "", DirListing([("x", FILE, 1, "e:1")]), 20.0,
                                  2.0)
    assert core.epoch("ns", "ds") == e0
    assert core.store_listing("ns", "ds", "", DirListing([("x", FILE, 1, "e:2")]), 30.0, 3.0)
    e1 = core.epoch("ns", "ds")
    # a slow listing begun before the one held (older news) never replaces it
    assert not core.store_listing("ns", "ds", "", a, 40.0, started=2.5)
    assert core.listing("ns", "ds", "", None) != a and core.epoch("ns", "ds") == e1
    assert e1 != e0 and older(e0, e1)
    core.invalidate("ns", "ds")                 # removed, made again: a fresh epoch
    assert core.epoch("ns", "ds") not in (e0, e1)
    assert core.epoch("other", "ds") != core.epoch("ns", "ds")
    assert not older("r1.5", "r2.1") and not older("r2.1", "r1.5")   # runs: unordered


def test_with_entry_replaces_or_removes_one_file():
    lst = DirListing([("a", FILE, 1, "e:1", 5.0, None), ("b", FILE, 2, "e:2")])
    new = lst.with_entry("a", (FILE, 3, "e:3", 6.0, 1.0))
    assert new.entry(new.find("a")) == ("a", FILE, 3, "e:3")
    assert new.times(new.find("a")) == (6.0, 1.0)
    assert new.entry(new.find("b")) == ("b", FILE, 2, "e:2")
    assert lst.with_entry("a", None).names == ("b",)
    assert lst != new and lst == DirListing(lst.rows())


@pytest.fixture()
def local(tmp_path):
    (tmp_path / "d").mkdir()
    for n in ("a.bin", "b.bin"):
        (tmp_path / "d" / n).write_bytes(b"1" * 10)
    core = MasterCore(incarnation="run")
    ds = Dataset("ds", "ns", (MountSpec("", f"file://{tmp_path}"),), uid="u1",
                 sync_interval=-1)                   # never re-listed on its own
    return tmp_path, core, Listings(core, threading.RLock(), 60.0), ds


def test_a_file_refreshed_on_its_own_replaces_its_entry_in_the_parent(local):
    root, core, lst, ds = local
    before = lst.entry(ds, "d/a.bin")
    epoch = lst.epoch(ds)
    assert before["size"] == 10 and before["version"].startswith("f:10:")
    assert "mtime" in before and before["fid"]
    (root / "d" / "a.bin").write_bytes(b"2" * 20)
    assert lst.entry(ds, "d/a.bin")["size"] == 10            # cached ("never")
    fresh = lst.entry(ds, "d/a.bin", refresh=True)
    assert fresh["size"] == 20 and fresh["fid"] != before["fid"]
    assert lst.epoch(ds) != epoch                             # every client will drop
    names = {e["name"]: e for e in lst.page(ds, "d", None, 100)["entries"]}
    assert names["ds/d/a.bin"] == fresh                       # the parent's listing too
    (root / "d" / "b.bin").unlink()
    with pytest.raises(NotFound):
        lst.entry(ds, "d/b.bin", refresh=True)
    assert [e["name"] for e in lst.page(ds, "d", None, 100)["entries"]] == ["ds/d/a.bin"]


def test_refresh_tree_of_a_file_or_a_directory(local):
    root, core, lst, ds = local
    lst.page(ds, "d", None, 100)
    (root / "d" / "c.bin").write_bytes(b"3")
    assert lst.refresh_tree(ds, "d/a.bin") == {"directories": 0, "files": 1}
    assert lst.refresh_tree(ds, "") == {"directories": 2, "files": 3}
    assert len(lst.page(ds, "d", None, 100)["entries"]) == 3
    with pytest.raises(NotFound):
        lst.refresh_tree(ds, "d/nope.bin")


def test_weak_versions_are_bound_to_the_dataset_incarnation_and_the_master_run(local):
    _, core, lst, ds = local
    again = Dataset("ds", "ns", ds.mounts, uid="u2")
    assert lst.weak_scope(ds) != lst.weak_scope(again)
    other_run = Listings(MasterCore(incarnation="run2"), threading.RLock(), 60.0)
    assert other_run.weak_scope(ds) != lst.weak_scope(ds)


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_the_client_drops_a_datasets_listings_when_its_epoch_moves():
    clock = Clock()
    m = MetadataCache(check_every=1.0, clock=clock)
    m.saw("ds", "r.1")
    m.put("ds/d", [{"name": "ds/d/a", "size": 1}], ttl=60, epoch="r.1")
    m.put("other/d", [{"name": "other/d/a"}], ttl=60, epoch=None)
    assert m.entry("ds/d", "ds/d/a") == ({"name": "ds/d/a", "size": 1}, True)
    assert not m.due("ds")
    clock.t += 1.5
    assert m.due("ds")                                   # ask before trusting it
    m.saw("ds", "r.1")
    assert not m.due("ds") and m.listing("ds/d") is not None
    m.saw("ds", "r.3")                                   # moved: dropped
    assert m.listing("ds/d") is None and m.entry("ds/d", "ds/d/a") == (None, False)
    m.put("ds/d", [], ttl=60, epoch="r.3")
    m.saw("ds", "r.2")                                   # a late reply: ignored
    assert m.epoch("ds") == "r.3" and m.listing("ds/d") == []
    m.put("ds/e", [], ttl=60, epoch="r.2")               # fetched before the move
    assert m.listing("ds/e") is None
    clock.t += 61
    assert m.listing("ds/d") is None                     # and time to live as before


def test_infos_of_one_directory_ask_to_list_it_after_two():
    m = MetadataCache()
    assert [m.missed("ds/d") for _ in range(3)] == [1, 2, 3]
    m.put("ds/d", [], ttl=60, epoch=None)
    assert m.missed("ds/d") == 1                         # listing it reset the count


def test_a_file_refreshed_when_its_parent_is_not_held_still_moves_the_epoch(local):
    """Clients may hold the parent's listing although the master dropped it."""
    root, core, lst, ds = local
    lst.page(ds, "d", None, 100)
    core.prune(float("inf"))                          # the master's copy expired and went
    epoch = lst.epoch(ds)
    (root / "d" / "a.bin").write_bytes(b"2" * 20)
    assert lst.entry(ds, "d/a.bin", refresh=True)["size"] == 20
    assert lst.epoch(ds) != epoch


def test_a_directory_gone_is_forgotten_by_a_refresh(local):
    import shutil
    root, core, lst, ds = local
    (root / "d" / "sub").mkdir()
    (root / "d" / "sub" / "f.bin").write_bytes(b"x")
    assert [e["name"] for e in lst.page(ds, "d/sub", None, 100)["entries"]] == ["ds/d/sub/f.bin"]
    shutil.rmtree(root / "d" / "sub")
    epoch = lst.epoch(ds)
    lst.refresh_tree(ds, "d")
    assert core.listing("ns", "ds", "d/sub", None) is None and lst.epoch(ds) != epoch
    with pytest.raises(NotFound):
        lst.page(ds, "d/sub", None, 100)


def test_older_news_never_lands_whatever_is_held():
    """A listing begun before a refresh, a forget or an eviction is dropped when it lands:
    seen as stale bytes when the parent was not held (F2), when the refreshed listing was
    evicted by the cap (A3cap), and as a deleted directory coming back (n2)."""
    core = MasterCore(incarnation="r", max_listed=2)
    old = DirListing([("f", FILE, 1, "e:old")])
    new = DirListing([("f", FILE, 1, "e:new")])
    core.refreshed("ns", "ds", "dir", at=5.0)            # a file refresh, parent not held
    assert not core.store_listing("ns", "ds", "dir", old, 10.0, started=4.0)
    assert core.listing("ns", "ds", "dir", None) is None
    core.store_listing("ns", "ds", "dir", new, 10.0, started=6.0)    # newer: it lands
    assert core.listing("ns", "ds", "dir", None) == new
    core.store_listing("ns", "ds", "x", DirListing([("a", FILE, 1, "e:a")]), 10.0, 7.0)
    core.store_listing("ns", "ds", "y", DirListing([("a", FILE, 1, "e:a")]), 10.0, 8.0)
    assert core.listing("ns", "ds", "dir", None) is None   # evicted by the cap ...
    assert not core.store_listing("ns", "ds", "dir", old, 10.0, started=5.5)   # ... remembered
    assert core.listing("ns", "ds", "dir", None) is None
    core.forget_listing("ns", "ds", "gone", at=9.0)        # a directory found gone
    assert not core.store_listing("ns", "ds", "gone/sub", old, 10.0, started=8.5)
    assert core.listing("ns", "ds", "gone/sub", None) is None
