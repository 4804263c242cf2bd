"""The master's pure state (fluidcache.master.core.MasterCore)."""
from __future__ import annotations

import pytest

from fluidcache.errors import AccessDenied, AlreadyExists, InvalidRequest, NotFound
from fluidcache.master.core import MasterCore
from fluidcache.dataset import Dataset, MountSpec


def dataset(name: str, ns: str = "team") -> Dataset:
    return Dataset(name, ns, (MountSpec("", f"file:///data/{name}"),))


@pytest.fixture
def core() -> MasterCore:
    c = MasterCore()
    c.create_namespace("team", "right-token")
    c.create_namespace("other", "other-token")
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
    tok = c.create_namespace("fresh")
    assert len(tok) >= 32
    assert c.create_namespace("fresh") == tok              # idempotent
    assert c.create_namespace("fresh", "another") == tok   # never replaced silently
    assert c.authorize("fresh", tok) == "fresh"
    assert c.create_namespace("second") != tok


def test_create_namespace_checks_the_name():
    with pytest.raises(InvalidRequest):
        MasterCore().create_namespace("Bad Name")


# -- datasets ----------------------------------------------------------------------------

def test_add_get_remove(core):
    d = dataset("imgs")
    core.add_dataset(d)
    assert core.dataset("team", "imgs") is d
    with pytest.raises(NotFound):
        core.dataset("other", "imgs")                      # namespaces are separate
    assert core.remove_dataset("team", "imgs") is d
    with pytest.raises(NotFound):
        core.dataset("team", "imgs")
    with pytest.raises(NotFound):
        core.remove_dataset("team", "imgs")


def test_add_twice_is_already_exists(core):
    core.add_dataset(dataset("imgs"))
    with pytest.raises(AlreadyExists):
        core.add_dataset(dataset("imgs"))
    core.add_dataset(dataset("imgs", ns="other"))          # same name, other namespace: fine


def test_add_to_unknown_namespace(core):
    with pytest.raises(NotFound):
        core.add_dataset(dataset("imgs", ns="ghost"))


def test_in_namespace_is_sorted_and_scoped(core):
    for name in ("zeta", "alpha", "mid"):
        core.add_dataset(dataset(name))
    core.add_dataset(dataset("beta", ns="other"))
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
    core.add_dataset(dataset("imgs"))
    for ns, name in (("team", "imgs"), ("team", "text"), ("other", "imgs")):
        for path in ("", "a"):
            core.store_listing(ns, name, path, [{"name": f"{ns}/{name}/{path}"}], expires=10.0,
                               started=1.0)
    core.remove_dataset("team", "imgs")
    assert core.listing("team", "imgs", "", now=0.0) is None
    assert core.listing("team", "imgs", "a", now=0.0) is None
    assert core.listing("team", "text", "a", now=0.0) == [{"name": "team/text/a"}]
    assert core.listing("other", "imgs", "", now=0.0) == [{"name": "other/imgs/"}]
    core.invalidate("team", "text")
    assert core.listing("team", "text", "", now=0.0) is None
