"""Dataset paths, mounts and records (fluidcache.dataset)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidcache import placement
from fluidcache.errors import AccessDenied, InvalidRequest, NotFound
from fluidcache.dataset import (Dataset, MountSpec, check_name, normalize,
                                         parse_mount, parse_sync)


@pytest.mark.parametrize("path, norm", [
    ("", ""), ("/", ""), ("a", "a"), ("/a/b/", "a/b"), ("a//b", "a/b"), ("//a///b//", "a/b"),
    ("./a/./b/.", "a/b"), ("/a//b/./c/", "a/b/c"), (".", ""), ("a/.hidden", "a/.hidden"),
    ("a/...", "a/..."), ("a/..b", "a/..b"),
])
def test_normalize(path, norm):
    assert normalize(path) == norm


@pytest.mark.parametrize("path", ["..", "/..", "a/..", "a/../b", "../etc/passwd", "a/./../.."])
def test_dot_dot_is_denied(path):
    with pytest.raises(AccessDenied):
        normalize(path)


@pytest.mark.parametrize("path", ["a\0b", "\0", "a/b\0/c"])
def test_nul_is_denied(path):
    with pytest.raises(AccessDenied):
        normalize(path)


def test_non_string_path():
    with pytest.raises(InvalidRequest):
        normalize(b"a/b")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["", ".", "a", "b", "..x", "x..", "dir", "é"]), max_size=8))
def test_normalize_never_leaves_empty_or_dot_segments(parts):
    out = normalize("/".join(parts))
    assert not out.startswith("/") and not out.endswith("/")
    segs = out.split("/") if out else []
    assert all(s not in ("", ".", "..") for s in segs)
    assert segs == [p for p in parts if p not in ("", ".")]
    assert normalize(out) == out


@pytest.mark.parametrize("spec, result", [
    ("/=s3://bucket/prefix", ("", "s3://bucket/prefix")),
    ("/extra=file:///data", ("extra", "file:///data")),
    ("/a/b/=gs://x?y=z", ("a/b", "gs://x?y=z")),        # '=' in the URL is kept
])
def test_parse_mount(spec, result):
    assert parse_mount(spec) == result


@pytest.mark.parametrize("spec", ["extra=file:///d", "/extra", "/extra=", "=s3://b", ""])
def test_parse_mount_rejects(spec):
    with pytest.raises(InvalidRequest):
        parse_mount(spec)


def test_parse_mount_refuses_dot_dot():
    with pytest.raises(AccessDenied):
        parse_mount("/../x=file:///d")


# -- datasets ----------------------------------------------------------------------------

def ds(*points: str, name="imagenet", ns="team", **kw) -> Dataset:
    return Dataset(name, ns, tuple(MountSpec(p, f"file:///m{i}") for i, p in enumerate(points)),
                   **kw)


UNION = ds("", "extra")


@pytest.mark.parametrize("path, point, rel", [
    ("", "", ""),
    ("train/x.jpg", "", "train/x.jpg"),
    ("extra", "extra", ""),
    ("extra/x", "extra", "x"),
    ("extra/a/b", "extra", "a/b"),
    ("extra2/x", "", "extra2/x"),       # a longer name is not under /extra
    ("extr", "", "extr"),
])
def test_resolve_longest_prefix_wins(path, point, rel):
    mount, got_rel = UNION.resolve(path)
    assert (mount.point, got_rel) == (point, rel)


def test_resolve_outside_every_mount():
    d = ds("a", "b/c")
    assert d.resolve("b/c/d")[0].point == "b/c"
    for path in ("", "b", "c", "ab", "b/cd"):
        with pytest.raises(NotFound):
            d.resolve(path)


def test_child_mounts_and_virtual_dirs():
    d = ds("", "extra", "a/b/c", "ab/x")
    assert d.child_mounts("") == ["a", "ab", "extra"]
    assert d.child_mounts("a") == ["b"]
    assert d.child_mounts("a/b") == ["c"]
    assert d.child_mounts("a/b/c") == []
    assert d.child_mounts("extra") == []
    assert d.is_virtual_dir("") and d.is_virtual_dir("a") and d.is_virtual_dir("a/b")
    assert not d.is_virtual_dir("a/b/c") and not d.is_virtual_dir("extra")
    assert not d.is_virtual_dir("b")


@pytest.mark.parametrize("points", [("", ""), ("a", "a"), ("a", "a/b"), ("a/b", "a"),
                                    ("x", "a", "a/b/c")])
def test_overlapping_mounts_rejected(points):
    with pytest.raises(InvalidRequest, match="overlap"):
        ds(*points)


@pytest.mark.parametrize("points", [("", "extra"), ("a", "ab"), ("a/b", "a/c"), ("",)])
def test_disjoint_mounts_accepted(points):
    assert len(ds(*points).mounts) == len(points)


def test_no_mounts_rejected():
    with pytest.raises(InvalidRequest):
        Dataset("d", "ns", ())


@pytest.mark.parametrize("name", ["a", "0", "x.y_z-1", "a" * 63])
def test_good_names(name):
    assert check_name("dataset", name) == name
    assert ds("", name=name, ns=name).name == name


@pytest.mark.parametrize("name", ["", "A", "Abc", "-x", ".x", "_x", "a" * 64, "a/b", "a b",
                                  "abc\n", "ab\tc", "é", None, 123])
def test_bad_names(name):
    with pytest.raises(InvalidRequest):
        ds("", name=name)
    with pytest.raises(InvalidRequest):
        ds("", ns=name)


@pytest.mark.parametrize("replicas", [0, -1, 17, "2", 1.0, None])
def test_replicas_out_of_bounds(replicas):
    with pytest.raises(InvalidRequest):
        ds("", replicas=replicas)


@pytest.mark.parametrize("replicas", [1, 16])
def test_replicas_bounds_accepted(replicas):
    assert ds("", replicas=replicas).replicas == replicas


def test_record_round_trip():
    d = Dataset("imgs", "team", (MountSpec("", "s3://b/p", {"key": "AK", "secret": "SK"}),
                                 MountSpec("extra", "file:///d")), replicas=3, sync_interval=30.0)
    rec = json.loads(json.dumps(d.to_record()))     # a record survives JSON
    assert Dataset.from_record(rec) == d


def test_public_never_includes_options_or_credentials():
    d = Dataset("imgs", "team", (
        MountSpec("", "s3://AKIDKEY:SECRETKEY@bucket/p", {"key": "OPTKEY", "secret": "OPTSECRET",
                                                          "client_kwargs": {"token": "TOK"}}),
        MountSpec("extra", "file:///d", {"anon": True})))
    pub = d.public()
    text = json.dumps(pub)
    for secret in ("OPTKEY", "OPTSECRET", "TOK", "AKIDKEY", "SECRETKEY", "anon"):
        assert secret not in text
    assert pub == {"name": "imgs", "namespace": "team", "replicas": 1,
                   "mounts": {"/": "s3://bucket/p", "/extra": "file:///d"},
                   "selector": {}, "read_only": True, "write_mode": "read-only",
                   "routing": "partitioned", "write_ttl": None,
                   "sync": "default", "sync_seconds": None}


# -- sync policy, selectors, new dataset fields ------------------------------------



@pytest.mark.parametrize("text, seconds", [
    ("always", 0.0), ("never", -1.0), ("90", 90.0), ("90s", 90.0), ("5m", 300.0),
    ("1h", 3600.0), (None, None), (30, 30.0), ("ALWAYS", 0.0)])
def test_parse_sync(text, seconds):
    assert parse_sync(text) == seconds


@pytest.mark.parametrize("bad", ["sometimes", "-5", "5d", "", -3])
def test_parse_sync_refuses(bad):
    with pytest.raises(InvalidRequest):
        parse_sync(bad)


def test_dataset_fields_round_trip_and_public_view():
    ds = Dataset("d", "default", (MountSpec("", "s3://b/p", {"secret": "s"}),), replicas=2,
                 sync_interval="always", selector={"zone": "a", "resource:ssd": ""},
                 write_mode="cache-through")
    again = Dataset.from_record(ds.to_record())
    assert again.to_record() == ds.to_record() and again.sync_interval == 0.0
    pub = ds.public()
    assert pub["sync"] == "always" and pub["sync_seconds"] == 0.0 and pub["replicas"] == 2
    assert pub["selector"] == {"zone": "a", "resource:ssd": ""} and "secret" not in str(pub)
    with pytest.raises(InvalidRequest):
        Dataset("d", "default", (MountSpec("", "s3://b"),), selector={"zone": 1})


def test_selector_matching_and_routing():
    workers = [{"id": f"w{i}", "labels": {"zone": "a" if i < 3 else "b"},
                "resources": ["ssd"] if i % 2 else []} for i in range(6)]
    assert placement.matches({"zone": "a"}, {"zone": "a"}, [])
    assert not placement.matches({"zone": "a"}, {"zone": "b"}, [])
    assert placement.matches({"resource:ssd": ""}, {}, ["ssd"])
    assert not placement.matches({"resource:ssd": ""}, {}, [])
    for key in ("k1", "k2", "k3", "k4"):
        order = placement.route(key, workers, {"zone": "a"})
        assert sorted(order) == [w["id"] for w in workers]           # everyone, once
        assert set(order[:3]) == {"w0", "w1", "w2"}                  # eligible first
        assert order[:3] == placement.ranked(key, ["w0", "w1", "w2"])
        assert placement.route(key, workers) == placement.ranked(key, [w["id"] for w in workers])


def test_workers_go_to_the_nodes_the_deployment_selects():
    nodes = [{"NodeID": "a", "Alive": True, "Labels": {"pool": "cache"}, "Resources": {"CPU": 2}},
             {"NodeID": "b", "Alive": True, "Labels": {}, "Resources": {"CPU": 2, "nvme": 1}},
             {"NodeID": "c", "Alive": False, "Labels": {"pool": "cache"}, "Resources": {}},
             {"NodeID": "d", "Alive": True, "Labels": {"pool": "gpu"}, "Resources": {}}]
    assert placement.nodes_for_workers(nodes) == {"a", "b", "d"}
    assert placement.nodes_for_workers(nodes, {"pool": "cache"}) == {"a"}
    assert placement.nodes_for_workers(nodes, {"resource:nvme": ""}) == {"b"}


@pytest.mark.parametrize("path", ["a/%2e%2e/b", "a/%2E%2E", "a/.%2e/b", "%2e%2e", "a/%2f..",
                                  "a/..%2f/b", "a/%5c..%5c"])
def test_encoded_traversal_is_refused(path):
    with pytest.raises(AccessDenied):
        normalize(path)


def test_percent_signs_that_do_not_escape_are_kept():
    assert normalize("a/b%20c/100%25") == "a/b%20c/100%25"


def test_local_first_puts_the_local_worker_first_when_it_is_eligible():
    workers = [{"id": f"w{i}", "labels": {"zone": "a" if i < 2 else "b"}} for i in range(4)]
    for key in ("k1", "k2", "k3"):
        assert placement.route(key, workers, None, "w3")[0] == "w3"
        assert placement.route(key, workers, {"zone": "a"}, "w3")[:2] == \
            placement.ranked(key, ["w0", "w1"])               # w3 not eligible: no favour
        assert sorted(placement.route(key, workers, None, "w3")) == ["w0", "w1", "w2", "w3"]
    with pytest.raises(InvalidRequest):
        Dataset("d", "default", (MountSpec("", "s3://b"),), routing="nearest")
