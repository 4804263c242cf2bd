"""Files kept in the cache (issue 19): async-through (acknowledged once durable on the
writing worker's disk, uploaded in the background, `sync` waits for it, `status` shows
it) and must-cache (kept only there, never uploaded, an optional TTL). Stores that are
down while files are written, replaced or removed; namespaces held apart."""
from __future__ import annotations

import random

import fsspec
import pytest

import fluidcache

from fluidcache.errors import FluidError
from fluidcache.testing.proxy import LatencyProxy
from fluidcache.testing.s3 import free_port

from ..helpers import wait_for

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
SIZES = {"empty": 0, "100KB": 100_000, "9MiB+3": 9 * MiB + 3}


def _fresh():
    return fsspec.filesystem("fluid", skip_instance_cache=True)


def _body(n: int, seed: int = 0) -> bytes:
    return random.Random(seed * 1_000_003 + n).randbytes(n)


class Store:
    """The bucket behind a proxy that can be taken down (connections refused) and
    brought back on the same port: a store that is down for a while."""

    def __init__(self, moto):
        self.moto, self.port, self.proxy = moto, free_port(), None

    def up(self):
        self.proxy = LatencyProxy(self.moto.endpoint, 0.0, port=self.port).__enter__()

    def down(self):
        self.proxy.__exit__()

    def options(self):
        return dict(self.moto.options(), endpoint_url=f"http://127.0.0.1:{self.port}")


@pytest.fixture(scope="module")
def kds(cluster, moto):
    s3 = moto.filesystem()
    s3.mkdir("fc-kept")
    s3.pipe_file("fc-kept/cache/old.bin", b"in the store before")
    store = Store(moto)
    store.up()
    admin = cluster["client"]
    admin.create_dataset("kasync", {"/": "s3://fc-kept/async"}, moto.options(),
                         write_mode="async-through")
    admin.create_dataset("kcache", {"/": "s3://fc-kept/cache"}, moto.options(),
                         write_mode="must-cache")
    admin.create_dataset("kttl", {"/": "s3://fc-kept/ttl"}, moto.options(),
                         write_mode="must-cache", write_ttl="2s")
    admin.create_dataset("kdown", {"/": "s3://fc-kept/down"}, store.options(),
                         write_mode="async-through")
    yield {"s3": s3, "admin": admin, "store": store}
    store.down()


def _in_store(kds, key: str):
    s3 = kds["s3"]
    s3.invalidate_cache()
    return s3.cat_file(f"fc-kept/{key}") if s3.exists(f"fc-kept/{key}") else None


@pytest.mark.parametrize("size", list(SIZES))
def test_async_through_round_trips_and_reaches_the_store_by_sync(kds, size):
    fs, n = _fresh(), SIZES[size]
    body = _body(n, 3)
    with fs.open(f"fluid://kasync/rt/{size}.bin", "wb") as f:
        for i in range(0, n, 3 * MiB + 7):
            f.write(body[i:i + 3 * MiB + 7])
    other = _fresh()                    # at once, in another client: listed, same bytes
    assert other.info(f"fluid://kasync/rt/{size}.bin")["size"] == n
    assert other.cat_file(f"fluid://kasync/rt/{size}.bin") == body
    r = kds["admin"].sync(f"fluid://kasync/rt/{size}.bin")
    assert r["pending"] == 0 and r["write_mode"] == "async-through"
    assert _in_store(kds, f"async/rt/{size}.bin") == body
    assert _fresh().cat_file(f"fluid://kasync/rt/{size}.bin") == body


@pytest.mark.parametrize("size", list(SIZES))
def test_must_cache_round_trips_and_never_reaches_the_store(kds, size):
    fs, n = _fresh(), SIZES[size]
    body = _body(n, 4)
    fs.pipe_file(f"fluid://kcache/rt/{size}.bin", body)
    other = _fresh()
    assert other.cat_file(f"fluid://kcache/rt/{size}.bin") == body
    assert f"kcache/rt/{size}.bin" in other.ls("fluid://kcache/rt", detail=False)
    assert kds["admin"].sync("fluid://kcache")["pending"] == 0     # nothing to upload
    assert _in_store(kds, f"cache/rt/{size}.bin") is None
    # the store's own files are still read through it
    assert other.cat_file("fluid://kcache/old.bin") == b"in the store before"


def test_a_store_down_does_not_stop_writes_and_sync_waits_for_it(kds, cluster, cli):
    fs, store, admin = _fresh(), kds["store"], kds["admin"]
    store.down()
    try:
        bodies = {f"d/{i}.bin": _body(50_000 + i * 700_000, 5) for i in range(4)}
        for path, body in bodies.items():
            fs.pipe_file(f"fluid://kdown/{path}", body)   # acknowledged: the store is down
        assert _fresh().cat("fluid://kdown/d/3.bin") == bodies["d/3.bin"]
        r = admin.sync("fluid://kdown/d", timeout=1.0)   # cannot finish: the store is down
        assert r["pending"] == 4 and r["pending_bytes"] == sum(map(len, bodies.values()))
        st = admin.status()
        assert st["uploads"]["pending_files"] >= 4
        assert any(w["stats"]["uploads_pending"] >= 4 for w in st["workers"])
        assert "uploads pending" in cli("status").stdout
        assert cli("sync", "--timeout", "0.5", "fluid://kdown", check=False).returncode == 1
    finally:
        store.up()
    assert admin.sync("fluid://kdown/d")["pending"] == 0      # waits for the retries
    for path, body in bodies.items():
        assert _in_store(kds, f"down/{path}") == body
    assert admin.status()["uploads"]["pending_files"] == 0


def test_of_two_closes_of_one_path_the_last_wins_in_the_store(kds):
    fs, store = _fresh(), kds["store"]
    store.down()                           # both wait: the older must not land last
    try:
        fs.pipe_file("fluid://kdown/two.bin", b"first" * 1000)
        fs.pipe_file("fluid://kdown/two.bin", b"second" * 999)
        assert _fresh().cat("fluid://kdown/two.bin") == b"second" * 999
    finally:
        store.up()
    kds["admin"].sync("fluid://kdown/two.bin")
    assert _in_store(kds, "down/two.bin") == b"second" * 999
    assert _fresh().cat("fluid://kdown/two.bin") == b"second" * 999


def test_rm_and_mv_of_kept_files_leave_nothing_stale(kds):
    """Removed or moved while waiting for the store, or while being uploaded, or after
    (whichever comes first here): the store ends with what the names say."""
    fs, store = _fresh(), kds["store"]
    store.down()
    try:
        fs.pipe_file("fluid://kdown/m/gone.bin", b"g" * 5000)
        fs.pipe_file("fluid://kdown/m/a.bin", b"a" * 7000)
        fs.pipe_file("fluid://kdown/m/c.bin", b"c" * 3000)
        fs.pipe_file("fluid://kdown/m/b.bin", b"old b")       # waits, to be moved over
        with pytest.raises(OSError, match="under store"):    # rm asks the store: down
            fs.rm("fluid://kdown/m/gone.bin")
        assert _fresh().cat("fluid://kdown/m/gone.bin") == b"g" * 5000   # nothing changed
    finally:
        store.up()
    fs.rm("fluid://kdown/m/gone.bin")
    fs.mv("fluid://kdown/m/a.bin", "fluid://kdown/m/b.bin")    # over a kept file
    fs.rm("fluid://kdown/m/c.bin")
    other = _fresh()
    assert other.ls("fluid://kdown/m", detail=False) == ["kdown/m/b.bin"]
    assert other.cat("fluid://kdown/m/b.bin") == b"a" * 7000
    with pytest.raises(FileNotFoundError):
        other.cat("fluid://kdown/m/gone.bin")
    kds["admin"].sync("fluid://kdown/m")
    kds["s3"].invalidate_cache()
    assert kds["s3"].ls("fc-kept/down/m", detail=False) == ["fc-kept/down/m/b.bin"]
    assert _in_store(kds, "down/m/b.bin") == b"a" * 7000       # the move, not "old b"
    assert _fresh().cat("fluid://kdown/m/b.bin") == b"a" * 7000
    fs.pipe_file("fluid://kcache/m/x.bin", b"x")
    kept = sum(w["stats"]["kept_files"] for w in kds["admin"].status()["workers"])
    fs.rm("fluid://kcache/m/x.bin")
    wait_for(lambda: sum(w["stats"]["kept_files"] for w in kds["admin"].status()["workers"])
             == kept - 1, timeout=30, what="the holder to drop the removed kept file")
    with pytest.raises(FileNotFoundError):
        _fresh().info("fluid://kcache/m/x.bin")


def test_must_cache_files_go_when_their_ttl_ends(kds):
    fs = _fresh()
    fs.pipe_file("fluid://kttl/short.bin", b"s" * 100)
    assert fs.cat("fluid://kttl/short.bin") == b"s" * 100
    wait_for(lambda: not _fresh().exists("fluid://kttl/short.bin"), timeout=30,
             what="the TTL to end")
    assert _in_store(kds, "ttl/short.bin") is None


def test_another_namespace_cannot_read_a_kept_file(kds, cluster, moto):
    fs = _fresh()
    fs.pipe_file("fluid://kcache/secret.bin", b"tenant data")
    entry = fs.info("fluid://kcache/secret.bin")
    admin = cluster["client"]
    token = admin.create_namespace("kthief", allow=["s3://fc-kept/thief"],
                                   endpoints=[moto.endpoint])
    fluidcache.connect(token=token, namespace="kthief").create_dataset(
        "kcache", {"/": "s3://fc-kept/thief"}, moto.options(), write_mode="must-cache")
    thief = fsspec.filesystem("fluid", namespace="kthief", token=token,
                              skip_instance_cache=True)
    w = next(w for w in thief.client.cluster.map()["workers"]
             if entry["version"].split(":")[1] == w["id"])
    # the same dataset name, path and version (the holder's id and the file's): refused
    args = {"ds": "kcache", "p": "secret.bin", "v": entry["version"], "s": entry["size"],
            "b": 0}
    with pytest.raises(FluidError, match="not kept here"):
        thief.client.cluster.call(w["address"], "read", args)
    with pytest.raises(FileNotFoundError):
        thief.cat("fluid://kcache/secret.bin")


def test_bad_ttl_and_modes_are_refused(kds, moto):
    with pytest.raises(ValueError, match="must-cache"):
        kds["admin"].create_dataset("kbad", {"/": "s3://fc-kept/bad"}, moto.options(),
                                    write_mode="async-through", write_ttl="1h")
    assert kds["admin"].dataset("kttl")["write_ttl"] == 2.0
