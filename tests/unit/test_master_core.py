"""The master's pure state (fluidcache.master.core.MasterCore), changed as the master
changes it: through journal records (`apply`) and the catalog's ops."""
from __future__ import annotations

import threading

import pytest

from fluidcache.config import Config
from fluidcache.errors import AccessDenied, AlreadyExists, InvalidRequest, NotFound
from fluidcache.master.blockmap import BlockMap
from fluidcache.master.catalog import Catalog
from fluidcache.master.core import MasterCore
from fluidcache.master.listings import Listings
from fluidcache.dataset import Dataset, MountSpec


def dataset(name: str, ns: str = "team") -> Dataset:
    return Dataset(name, ns, (MountSpec("", f"file:///data/{name}"),))


def namespace(core: MasterCore, ns: str, token: str) -> None:
    core.apply({"op": "namespace", "ns": ns, "token": token})


def add(core: MasterCore, ds: Dataset) -> None:
    core.apply({"op": "dataset_add", "dataset": ds.to_record()})


def catalog(core: MasterCore) -> Catalog:
    """The catalog's ops over `core` (no Ray, no journal: commit applies at once)."""
    lock = threading.RLock()
    return Catalog(core, lock, Listings(core, lock, 60.0), BlockMap(), Config(), core.apply,
                   free_owner=lambda owner: None)


@pytest.fixture
def core() -> MasterCore:
    c = MasterCore()
    namespace(c, "team", "right-token")
    namespace(c, "other", "other-token")
    return c


# -- namespaces and tokens ---------------------------------------------------------------

def test_authorize_with_the_right_token(core):
    assert core.authorize("team", "right-token") == "team"


@pytest.mark.parametrize("ns, token", [
    ("team", "wrong-token"), ("team", ""), ("team", None), ("team", "right-token "),
    ("team", "other-token"),              # another namespace's token
    ("nope", "right-token"), ("nope", None), (None, "right-token"), (None, None), ("", ""),
])
def test_authorize_denies(core, ns, token):
    with pytest.raises(AccessDenied):
        core.authorize(ns, token)


def test_create_namespace_generates_a_token_once():
    c = MasterCore()
    namespace(c, "default", "admin-token")
    tok = catalog(c).op_namespace_create("default", {"name": "fresh"})["token"]
    assert len(tok) >= 32
    namespace(c, "fresh", tok)
    assert c.tokens["fresh"] == tok                        # idempotent
    namespace(c, "fresh", "another")
    assert c.tokens["fresh"] == tok                        # never replaced silently
    assert c.authorize("fresh", tok) == "fresh"
    assert catalog(c).op_namespace_create("default", {"name": "second"})["token"] != tok


def test_create_namespace_checks_the_name():
    c = MasterCore()
    namespace(c, "default", "admin-token")
    with pytest.raises(InvalidRequest):
        catalog(c).op_namespace_create("default", {"name": "Bad Name"})


# -- datasets ----------------------------------------------------------------------------

def test_add_get_remove(core):
    d = dataset("imgs")
    add(core, d)
    assert core.dataset("team", "imgs") == d
    with pytest.raises(NotFound):
        core.dataset("other", "imgs")                      # namespaces are separate
    assert catalog(core).op_dataset_rm("team", {"name": "imgs"}) == d.public()
    with pytest.raises(NotFound):
        core.dataset("team", "imgs")
    with pytest.raises(NotFound):
        catalog(core).op_dataset_rm("team", {"name": "imgs"})


def test_add_twice_is_already_exists(core):
    add(core, dataset("imgs"))
    with pytest.raises(AlreadyExists):
        core.check_new(dataset("imgs"))
    core.check_new(dataset("imgs", ns="other"))            # same name, other namespace: fine
    add(core, dataset("imgs", ns="other"))


def test_add_to_unknown_namespace(core):
    with pytest.raises(NotFound):
        core.check_new(dataset("imgs", ns="ghost"))


def test_in_namespace_is_sorted_and_scoped(core):
    for name in ("zeta", "alpha", "mid"):
        add(core, dataset(name))
    add(core, dataset("beta", ns="other"))
    assert [d.name for d in core.in_namespace("team")] == ["alpha", "mid", "zeta"]
    assert [d.name for d in core.in_namespace("other")] == ["beta"]
    assert core.in_namespace("ghost") == []


# -- workers and the cluster map ---------------------------------------------------------

def test_map_version_bumps_only_on_change(core):
    w1 = {"id": "w1", "host": "10.0.0.1", "port": 1}
    assert core.register_worker(w1) == 1
    assert core.register_worker(dict(w1)) == 1             # same info again: no change
    assert core.register_worker({**w1, "port": 2}) == 2    # changed info
    assert core.register_worker({"id": "w0", "host": "h", "port": 3}) == 3
    assert core.cluster_map() == {"version": 3, "workers": [
        {"id": "w0", "host": "h", "port": 3}, {"id": "w1", "host": "10.0.0.1", "port": 2}]}
    core.remove_worker("ghost")
    assert core.map_version == 3
    core.remove_worker("w1")
    assert core.map_version == 4
    assert [w["id"] for w in core.cluster_map()["workers"]] == ["w0"]


# -- listing cache -----------------------------------------------------------------------

def test_listing_expires_at_its_deadline(core):
    entries = [{"name": "a", "size": 1}]
    assert core.listing("team", "imgs", "", now=0.0) is None
    core.store_listing("team", "imgs", "", entries, expires=100.0, started=1.0)
    assert core.listing("team", "imgs", "", now=0.0) == entries
    assert core.listing("team", "imgs", "", now=99.999) == entries
    assert core.listing("team", "imgs", "", now=100.0) is None
    assert core.listing("team", "imgs", "", now=150.0) is None
    assert core.listing("team", "imgs", "sub", now=0.0) is None     # per path


def test_store_listing_replaces(core):
    core.store_listing("team", "imgs", "", [{"name": "old"}], expires=10.0, started=1.0)
    core.store_listing("team", "imgs", "", [{"name": "new"}], expires=20.0, started=2.0)
    assert core.listing("team", "imgs", "", now=15.0) == [{"name": "new"}]


def test_invalidate_and_remove_drop_only_that_dataset(core):
    add(core, dataset("imgs"))
    for ns, name in (("team", "imgs"), ("team", "text"), ("other", "imgs")):
        for path in ("", "a"):
            core.store_listing(ns, name, path, [{"name": f"{ns}/{name}/{path}"}], expires=10.0,
                               started=1.0)
    core.apply({"op": "dataset_rm", "ns": "team", "name": "imgs"})
    assert core.listing("team", "imgs", "", now=0.0) is None
    assert core.listing("team", "imgs", "a", now=0.0) is None
    assert core.listing("team", "text", "a", now=0.0) == [{"name": "team/text/a"}]
    assert core.listing("other", "imgs", "", now=0.0) == [{"name": "other/imgs/"}]
    core.invalidate("team", "text")
    assert core.listing("team", "text", "", now=0.0) is None
