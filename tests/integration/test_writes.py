"""Writes through `fluid://` (issue 19): each write mode round-trips files of every size
class, a closed file is what every client reads next (no stale listing, no stale cached
block), a file is committed whole or not at all, and write ops hold namespaces apart."""
from __future__ import annotations

import os
import posixpath
import random
import subprocess
import sys
import textwrap
import zlib

import fsspec
import pytest

import fluidcache
from fluidcache.errors import NotFound

from ..helpers import wait_for

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
SIZES = {"empty": 0, "100KB": 100_000, "9MiB+3": 9 * MiB + 3}   # 9 MiB+3: chunked (8 MiB)


@pytest.fixture(scope="module")
def wds(cluster, moto, tmp_path_factory):
    """Datasets over bucket fc-write: one per write mode, and one over local files."""
    s3 = moto.filesystem()
    s3.mkdir("fc-write")
    s3.pipe_file("fc-write/ro/keep.bin", b"keep")
    admin = cluster["client"]
    local = tmp_path_factory.mktemp("wlocal")
    for name, mode in (("wro", "read-only"), ("wthrough", "through"),
                       ("wcache", "cache-through")):
        admin.create_dataset(name, {"/": f"s3://fc-write/{name.removeprefix('w')}"},
                             moto.options(), write_mode=mode)
    admin.create_dataset("wlocal", {"/": f"file://{local}"}, write_mode="through")
    return {"s3": s3, "local": local, "admin": admin}


def _fresh():
    return fsspec.filesystem("fluid", skip_instance_cache=True)


def _body(n: int, seed: int = 0) -> bytes:
    return random.Random(seed * 1_000_003 + n).randbytes(n)


def _store(wds, ds: str, path: str):
    """The file's bytes in the under store itself (None: not there)."""
    if ds == "wlocal":
        p = wds["local"] / path
        return p.read_bytes() if p.exists() else None
    s3 = wds["s3"]
    key = f"fc-write/{ds.removeprefix('w')}/{path}"
    s3.invalidate_cache()
    return s3.cat_file(key) if s3.exists(key) else None


@pytest.mark.parametrize("ds", ["wthrough", "wcache", "wlocal"])
@pytest.mark.parametrize("size", list(SIZES))
def test_each_mode_round_trips_every_size(wds, ds, size):
    fs, n = _fresh(), SIZES[size]
    body = _body(n, 1)
    with fs.open(f"fluid://{ds}/rt/{size}.bin", "wb") as f:
        for i in range(0, n, 3 * MiB + 7):              # uneven writes across chunks
            f.write(body[i:i + 3 * MiB + 7])
    assert _store(wds, ds, f"rt/{size}.bin") == body
    assert fs.cat_file(f"fluid://{ds}/rt/{size}.bin") == body
    other = _fresh()                                     # another client: listed, same bytes
    assert other.info(f"fluid://{ds}/rt/{size}.bin")["size"] == n
    assert other.cat_file(f"fluid://{ds}/rt/{size}.bin") == body
    assert f"{ds}/rt/{size}.bin" in other.ls(f"fluid://{ds}/rt", detail=False)


def test_read_only_refuses_every_write_and_nothing_reaches_the_store(wds):
    fs = _fresh()
    for call in (lambda: fs.open("fluid://wro/new.bin", "wb"),
                 lambda: fs.pipe_file("fluid://wro/new.bin", b"x"),
                 lambda: fs.rm("fluid://wro/keep.bin"),
                 lambda: fs.mkdir("fluid://wro/d"),
                 lambda: fs.touch("fluid://wro/t"),
                 lambda: fs.mv("fluid://wro/keep.bin", "fluid://wro/moved.bin")):
        with pytest.raises(PermissionError):
            call()
    # the master and workers refuse too, whatever a client believes
    client = fs.client.cluster
    with pytest.raises(PermissionError):
        client.master("rm", {"ds": "wro", "paths": ["keep.bin"]})
    w = client.map()["workers"][0]["address"]
    with pytest.raises(PermissionError):
        client.call(w, "put", {"ds": "wro", "p": "new.bin"}, payload=b"x")
    assert wds["s3"].ls("fc-write/ro", detail=False) == ["fc-write/ro/keep.bin"]


def _store_fetches(client) -> int:
    return sum(w["stats"]["ufs_fetches"] for w in client.status()["workers"])


def test_cache_through_caches_the_blocks_it_writes(wds, cluster):
    fs, body, client = _fresh(), _body(3 * MiB + 5, 2), cluster["client"]
    fs.pipe_file("fluid://wcache/cached/c.bin", body[:100])          # one put
    with fs.open("fluid://wcache/cached/big.bin", "wb") as f:        # chunked
        f.write(body)
    wait_for(lambda: client.du("fluid://wcache/cached")["cached_bytes"] == len(body) + 100,
             timeout=30, what="the written blocks reported cached")
    before = _store_fetches(client)
    assert _fresh().cat_file("fluid://wcache/cached/big.bin") == body
    assert _store_fetches(client) == before                           # no block fetched
    _fresh().pipe_file("fluid://wthrough/uncached.bin", body)
    assert client.du("fluid://wthrough/uncached.bin")["cached_bytes"] == 0
    before = _store_fetches(client)
    assert _fresh().cat_file("fluid://wthrough/uncached.bin") == body
    assert _store_fetches(client) == before + 4                       # the control: 4 blocks


@pytest.mark.parametrize("ds", ["wthrough", "wcache"])
def test_an_overwrite_is_read_at_once_by_every_client_never_the_old_bytes(wds, ds):
    path = f"fluid://{ds}/over/v.bin"
    reader, writer = _fresh(), _fresh()
    old, new = _body(2 * MiB + 9, 3), _body(2 * MiB + 9, 4)         # same size
    writer.pipe_file(path, old)
    assert reader.cat_file(path) == old                               # listed and cached
    writer.pipe_file(path, new)
    assert reader.cat_file(path) == new                               # no wait, no refresh
    with reader.open(path, "rb") as f:
        assert f.read() == new
    script = textwrap.dedent(f"""
        import fsspec, hashlib, sys
        fs = fsspec.filesystem("fluid")
        sys.stdout.write(hashlib.sha256(fs.cat_file({path!r})).hexdigest())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-2000:]
    import hashlib
    assert out.stdout == hashlib.sha256(new).hexdigest()


def test_rm_and_mv_leave_no_stale_bytes(wds):
    fs, reader = _fresh(), _fresh()
    a, b = _body(MiB + 1, 5), _body(MiB + 1, 6)
    fs.pipe({"fluid://wcache/mv/a.bin": a, "fluid://wcache/mv/b.bin": b,
             "fluid://wcache/mv/sub/c.bin": b"c"})
    assert reader.cat_file("fluid://wcache/mv/a.bin") == a
    fs.mv("fluid://wcache/mv/a.bin", "fluid://wcache/mv/b.bin")      # over an existing file
    with pytest.raises(FileNotFoundError):
        reader.cat_file("fluid://wcache/mv/a.bin")
    assert reader.cat_file("fluid://wcache/mv/b.bin") == a
    assert _store(wds, "wcache", "mv/a.bin") is None
    fs.rm("fluid://wcache/mv", recursive=True)
    for p in ("mv/b.bin", "mv/sub/c.bin"):
        with pytest.raises(FileNotFoundError):
            reader.cat_file(f"fluid://wcache/{p}")
        assert _store(wds, "wcache", p) is None
    with pytest.raises(FileNotFoundError):
        reader.ls("fluid://wcache/mv")
    with pytest.raises(FileNotFoundError):
        fs.rm("fluid://wcache/mv/none.bin")


@pytest.mark.parametrize("n", [100, 9 * MiB + 3])
@pytest.mark.parametrize("ds", ["wthrough", "wlocal"])
def test_a_file_left_on_an_exception_is_never_committed(wds, ds, n):
    fs = _fresh()
    with pytest.raises(RuntimeError):
        with fs.open(f"fluid://{ds}/half/h{n}.bin", "wb") as f:
            f.write(_body(n, 7))
            raise RuntimeError("the job died")
    assert _store(wds, ds, f"half/h{n}.bin") is None
    assert not _fresh().exists(f"fluid://{ds}/half/h{n}.bin")
    f = fs.open(f"fluid://{ds}/half/d{n}.bin", "wb")
    f.write(_body(n, 8))
    f.discard()
    assert _store(wds, ds, f"half/d{n}.bin") is None
    if ds == "wlocal":                   # no temporary file left behind either
        leftovers = [p for p in wds["local"].rglob("*") if p.is_file() and "half" in str(p)]
        assert leftovers == []


def test_exclusive_create_and_names(wds):
    fs = _fresh()
    fs.pipe_file("fluid://wthrough/x/one.bin", b"1", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file("fluid://wthrough/x/one.bin", b"2", mode="create")
    with pytest.raises(FileExistsError):
        fs.open("fluid://wthrough/x/one.bin", "xb")
    with pytest.raises(OSError):
        fs.open("fluid://wthrough/x/one.bin", "ab")
    assert fs.cat_file("fluid://wthrough/x/one.bin") == b"1"
    for bad in ("fluid://wthrough/../ro/keep.bin", "fluid://wthrough/a/../../b"):
        with pytest.raises(PermissionError):
            fs.pipe_file(bad, b"x")
    with pytest.raises((IsADirectoryError, PermissionError, ValueError)):
        fs.pipe_file("fluid://wthrough", b"x")
    fs.makedirs("fluid://wlocal/made/deep", exist_ok=True)
    assert fs.isdir("fluid://wlocal/made/deep") and (wds["local"] / "made" / "deep").is_dir()
    fs.touch("fluid://wlocal/made/deep/t")
    assert fs.cat_file("fluid://wlocal/made/deep/t") == b""


def test_write_ops_hold_namespaces_apart(wds, cluster, moto):
    """A tenant's token writes only its own datasets; another namespace's write session
    is no session at all; a tenant's dataset takes writes only where its grant allows."""
    admin = wds["admin"]
    token = admin.create_namespace("wten", allow=["s3://fc-write/tenant"],
                                   endpoints=[moto.endpoint])
    tenant = fluidcache.connect(token=token, namespace="wten")
    tenant.create_dataset("mine", {"/": "s3://fc-write/tenant"}, moto.options(),
                          write_mode="through")
    tfs = fsspec.filesystem("fluid", token=token, namespace="wten", skip_instance_cache=True)
    tfs.pipe_file("fluid://mine/t.bin", b"tenant")
    assert _store(wds, "wtenant", "t.bin") == b"tenant"
    with pytest.raises(FileNotFoundError):                     # the default's dataset
        tfs.pipe_file("fluid://wthrough/evil.bin", b"x")
    assert _store(wds, "wthrough", "evil.bin") is None
    # the admin opens a session; the tenant names it
    admin_fs = _fresh()
    f = admin_fs.open("fluid://wthrough/sess.bin", "wb")
    f.write(_body(9 * MiB, 9))                                    # a session is open now
    assert f.session is not None
    tc = tfs.client.cluster
    for op, args, payload in (("write", {"w": f.session, "o": 8 * MiB}, b"evil"),
                              ("write_close", {"w": f.session}, b""),
                              ("write_abort", {"w": f.session}, b"")):
        with pytest.raises(NotFound):
            tc.call(f.worker["address"], op, args, payload=payload)
    f.close()
    assert _store(wds, "wthrough", "sess.bin") == _body(9 * MiB, 9)
    wrong = fsspec.filesystem("fluid", token="nope", namespace="wten", skip_instance_cache=True)
    with pytest.raises(PermissionError):
        wrong.pipe_file("fluid://mine/w.bin", b"x")


def test_sync_answers_for_the_modes_built(wds, cluster, cli, moto):
    assert cluster["client"].sync("fluid://wthrough/rt")["pending"] == 0
    out = cli("sync", "fluid://wcache")
    assert "0 files pending" in out.stdout
    shown = cluster["client"].dataset("wcache")
    assert shown["write_mode"] == "cache-through" and shown["read_only"] is False
    with pytest.raises(ValueError, match="write mode must be one of"):
        cluster["client"].create_dataset("wasync", {"/": "s3://fc-write/async"},
                                         moto.options(), write_mode="write-back")


def test_a_writer_between_commit_and_listing_never_gets_our_bytes_cached(wds):
    """Another writer (straight to the store) races fluid's cache-through writes: the
    bytes read for a version are that version's, never a block of ours cached under the
    other writer's version."""
    import hashlib
    import threading
    s3, stop = wds["s3"], threading.Event()
    theirs = _body(MiB + 17, 40)
    their_etag = hashlib.md5(theirs).hexdigest()

    def hammer():
        while not stop.is_set():
            s3.pipe_file("fc-write/cache/race/r.bin", theirs)

    t = threading.Thread(target=hammer, daemon=True)
    t.start()
    try:
        fs, reader = _fresh(), _fresh()
        for i in range(16):
            ours = _body(MiB + 17, 41 + i)
            fs.pipe_file("fluid://wcache/race/r.bin", ours)
            listed = reader.info("fluid://wcache/race/r.bin", refresh=True)
            got = reader.cat_file("fluid://wcache/race/r.bin")
            if listed.get("ETag", "").strip('"') == their_etag:
                assert got == theirs, f"round {i}: our bytes under their version"
            else:
                assert got in (ours, theirs)
    finally:
        stop.set()
        t.join(30)


def test_a_local_overwrite_is_never_seen_half_written(wds):
    import threading
    fs, target = _fresh(), wds["local"] / "atomic" / "a.bin"
    old, new = _body(4 * MiB, 50), _body(4 * MiB + 1, 51)
    fs.pipe_file("fluid://wlocal/atomic/a.bin", old)
    seen, stop = set(), threading.Event()

    def poll():
        while not stop.is_set():
            try:
                seen.add(target.stat().st_size)
            except FileNotFoundError:
                seen.add(-1)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    try:
        for i in range(6):
            fs.pipe_file("fluid://wlocal/atomic/a.bin", new if i % 2 == 0 else old)
    finally:
        stop.set()
        t.join(30)
    assert seen <= {len(old), len(new)}, sorted(seen)[:10]
    assert fs.ls("fluid://wlocal/atomic", detail=False) == ["wlocal/atomic/a.bin"]
    f = fs.open("fluid://wlocal/atomic/b.bin", "wb")
    f.write(_body(9 * MiB, 52))                           # a session with a file being written
    assert fs.ls("fluid://wlocal/atomic", detail=False, refresh=True) == ["wlocal/atomic/a.bin"]
    f.discard()
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.bin"]


def test_a_local_dataset_never_reads_or_writes_through_a_link_out_of_it(wds, tmp_path):
    import os
    fs, outside = _fresh(), tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    os.symlink(outside, wds["local"] / "escape")          # put there on the host, not by us
    try:
        fs.invalidate_cache()
        assert "wlocal/escape" not in fs.ls("fluid://wlocal", detail=False, refresh=True)
        with pytest.raises(PermissionError, match="outside the mount"):
            fs.cat_file("fluid://wlocal/escape/secret")
        with pytest.raises(PermissionError, match="outside the mount"):
            fs.pipe_file("fluid://wlocal/escape/new.bin", b"x" * 100)
        with pytest.raises(PermissionError, match="outside the mount"):
            fs.mkdir("fluid://wlocal/escape/made")
        fs.pipe_file("fluid://wlocal/inside.bin", b"y" * 100)
        with pytest.raises(PermissionError, match="outside the mount"):
            fs.copy("fluid://wlocal/inside.bin", "fluid://wlocal/escape/copied.bin")
        assert sorted(p.name for p in outside.iterdir()) == ["secret"]
        assert (outside / "secret").read_bytes() == b"secret"
    finally:
        os.unlink(wds["local"] / "escape")


def test_rm_r_of_a_local_directory_never_follows_a_link_into_another(wds):
    import os
    fs, local = _fresh(), wds["local"]
    (local / "lr" / "a").mkdir(parents=True)
    (local / "lr" / "b").mkdir()
    (local / "lr" / "a" / "own.bin").write_bytes(b"o")
    for k in ("keep1", "keep2"):
        (local / "lr" / "b" / k).write_bytes(b"k")
    os.symlink("../b", local / "lr" / "a" / "tob")       # put there on the host
    fs.invalidate_cache()
    assert fs.ls("fluid://wlocal/lr/a", detail=False, refresh=True) == ["wlocal/lr/a/own.bin"]
    fs.rm("fluid://wlocal/lr/a", recursive=True)
    assert not os.path.lexists(local / "lr" / "a")       # the link went with it ...
    assert sorted(p.name for p in (local / "lr" / "b").iterdir()) == ["keep1", "keep2"]
    # a copy onto a link to a file replaces the link, as a write does: its target stays
    os.symlink("b/keep1", local / "lr" / "alias")
    fs.pipe_file("fluid://wlocal/lr/src.bin", b"new")
    fs.copy("fluid://wlocal/lr/src.bin", "fluid://wlocal/lr/alias")
    assert not os.path.islink(local / "lr" / "alias")
    assert (local / "lr" / "alias").read_bytes() == b"new"
    assert (local / "lr" / "b" / "keep1").read_bytes() == b"k"
    fs.rm("fluid://wlocal/lr", recursive=True)           # ... never what it led to


def test_an_async_write_through_a_link_out_is_refused_at_open(wds, cluster, tmp_path):
    import os
    local, outside = tmp_path / "lasync", tmp_path / "outside"
    local.mkdir()
    outside.mkdir()
    os.symlink(outside, local / "escape")
    cluster["client"].create_dataset("wlasync", {"/": f"file://{local}"},
                                     write_mode="async-through")
    try:
        fs = _fresh()
        with pytest.raises(PermissionError, match="outside the mount"):
            fs.pipe_file("fluid://wlasync/escape/p.bin", b"x" * 100)
        with pytest.raises(PermissionError, match="outside the mount"):
            with fs.open("fluid://wlasync/escape/q.bin", "wb") as f:
                f.write(b"y" * 100)
        fs.pipe_file("fluid://wlasync/fine.bin", b"z" * 100)
        fs.sync("fluid://wlasync", timeout=60)
        assert (local / "fine.bin").read_bytes() == b"z" * 100
        assert list(outside.iterdir()) == []
        assert "wlasync/escape" not in fs.ls("fluid://wlasync", detail=False, refresh=True)
    finally:
        cluster["client"].remove_dataset("wlasync")


def test_a_dataset_removed_while_a_file_is_written_gets_nothing(wds, moto):
    admin, fs = wds["admin"], _fresh()
    admin.create_dataset("wgone", {"/": "s3://fc-write/gone"}, moto.options(),
                         write_mode="through")
    f = fs.open("fluid://wgone/g.bin", "wb")
    f.write(_body(9 * MiB, 60))                          # the session is open
    admin.remove_dataset("wgone")
    wds["s3"].pipe_file("fc-write/gone/keep", b"k")     # a read-only dataset's root exists
    admin.create_dataset("wgone", {"/": "s3://fc-write/gone"}, moto.options())  # read-only
    with pytest.raises((FileNotFoundError, PermissionError)):
        f.close()
    assert _store(wds, "wgone", "g.bin") is None
    with pytest.raises(PermissionError):
        fs.client.cluster.call(f.worker["address"], "put", {"ds": "wgone", "p": "h.bin"},
                               payload=b"x")
    assert _store(wds, "wgone", "h.bin") is None


def test_rm_checks_every_path_first_and_keeps_directories_with_files(wds):
    fs = _fresh()
    fs.pipe({"fluid://wthrough/rmd/a.bin": b"a", "fluid://wthrough/rmd/b.bin": b"b"})
    with pytest.raises(IsADirectoryError):
        fs.rm("fluid://wthrough/rmd")                       # not recursive
    assert _store(wds, "wthrough", "rmd/a.bin") == b"a"
    assert "wthrough/rmd" in _fresh().ls("fluid://wthrough", detail=False)
    with pytest.raises(ValueError):                         # a mount's root in the page
        fs.client.cluster.master("rm", {"ds": "wthrough", "paths": ["rmd/a.bin", ""]})
    assert _store(wds, "wthrough", "rmd/a.bin") == b"a"     # nothing was removed
    fs.rm("fluid://wthrough/rmd", recursive=True)
    assert _store(wds, "wthrough", "rmd/a.bin") is None


def test_a_resent_chunk_is_taken_once_and_a_retried_close_answers_again(wds):
    fs = _fresh()
    cluster = fs.client.cluster
    w = fs.client.cluster.map()["workers"][0]["address"]
    sid = cluster.call(w, "write_open", {"ds": "wthrough", "p": "retry/r.bin"})[0]["w"]
    one, two = _body(MiB, 70), _body(MiB, 71)
    cluster.call(w, "write", {"w": sid, "o": 0}, payload=one)
    cluster.call(w, "write", {"w": sid, "o": 0}, payload=one)        # the same chunk again
    with pytest.raises(ValueError):                                  # not the same: refused
        cluster.call(w, "write", {"w": sid, "o": 0}, payload=two)
    with pytest.raises(FileNotFoundError):                           # and the write aborted
        cluster.call(w, "write", {"w": sid, "o": MiB}, payload=two)
    sid = cluster.call(w, "write_open", {"ds": "wthrough", "p": "retry/r.bin"})[0]["w"]
    cluster.call(w, "write", {"w": sid, "o": 0}, payload=one)
    cluster.call(w, "write", {"w": sid, "o": 0}, payload=one)
    cluster.call(w, "write", {"w": sid, "o": MiB}, payload=two)
    first = cluster.call(w, "write_close", {"w": sid})[0]
    assert cluster.call(w, "write_close", {"w": sid})[0] == first
    assert _store(wds, "wthrough", "retry/r.bin") == one + two


def test_files_closed_by_fsspec_or_a_text_wrapper_on_an_exception_are_not_committed(wds):
    for n in (100, 9 * MiB + 3):
        with pytest.raises(RuntimeError):
            with fsspec.open(f"fluid://wthrough/exc/open{n}.bin", "wb") as f:   # OpenFile
                f.write(_body(n, 80))
                raise RuntimeError("the job died")
        assert _store(wds, "wthrough", f"exc/open{n}.bin") is None
    with pytest.raises(RuntimeError):
        with _fresh().open("fluid://wthrough/exc/text.txt", "w") as f:           # text
            f.write("half a line")
            raise RuntimeError("the job died")
    assert _store(wds, "wthrough", "exc/text.txt") is None
    try:
        raise KeyError("while handling this")
    except KeyError:                   # a file written inside `except` is committed
        with _fresh().open("fluid://wthrough/exc/report.txt", "w") as f:
            f.write("it failed")
    assert _store(wds, "wthrough", "exc/report.txt") == b"it failed"


def test_a_transaction_commits_its_files_at_its_end_or_not_at_all(wds):
    fs = _fresh()
    with fs.transaction:
        fs.pipe_file("fluid://wthrough/tx/a.bin", b"a")
        with fs.open("fluid://wthrough/tx/b.bin", "wb") as f:
            f.write(_body(9 * MiB, 81))
        assert _store(wds, "wthrough", "tx/a.bin") is None            # not yet
    assert _store(wds, "wthrough", "tx/a.bin") == b"a"
    assert _store(wds, "wthrough", "tx/b.bin") == _body(9 * MiB, 81)
    with pytest.raises(RuntimeError):
        with fs.transaction:
            fs.pipe_file("fluid://wthrough/tx/c.bin", b"c")
            raise RuntimeError("rolled back")
    assert _store(wds, "wthrough", "tx/c.bin") is None


# -- fsspec's own abstract suites, with fluid:// as the filesystem under test ---------------
from fsspec.tests.abstract import AbstractFixtures  # noqa: E402
from fsspec.tests.abstract.copy import AbstractCopyTests  # noqa: E402
from fsspec.tests.abstract.get import AbstractGetTests  # noqa: E402
from fsspec.tests.abstract.open import AbstractOpenTests  # noqa: E402
from fsspec.tests.abstract.pipe import AbstractPipeTests  # noqa: E402
from fsspec.tests.abstract.put import AbstractPutTests  # noqa: E402


class FluidFixtures(AbstractFixtures):
    """Each test in its own directory of dataset `wcache` (S3: no empty directories)."""

    @pytest.fixture
    def fs(self, wds):
        return _fresh()

    @pytest.fixture
    def fs_join(self):
        return posixpath.join

    @pytest.fixture
    def fs_path(self, wds, request):
        name = request.node.name
        return f"wcache/abstract/{name.partition('[')[0]}-{zlib.crc32(name.encode()):08x}"

    @pytest.fixture
    def supports_empty_directories(self):
        return False


class TestFluidCopy(FluidFixtures, AbstractCopyTests):
    pass


class TestFluidGet(FluidFixtures, AbstractGetTests):
    pass


class TestFluidPut(FluidFixtures, AbstractPutTests):
    pass


class TestFluidPipe(FluidFixtures, AbstractPipeTests):
    pass


class TestFluidOpen(FluidFixtures, AbstractOpenTests):
    pass


# -- what libraries write --------------------------------------------------------------------
def test_torch_checkpoints_and_distributed_checkpoint_round_trip(wds):
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

    g = torch.Generator().manual_seed(3)
    state = {"w": torch.randn(1100, 1100, generator=g), "b": torch.randn(7, generator=g),
             "step": torch.tensor(41)}                          # ~4.6 MiB
    fs = _fresh()
    with fs.open("fluid://wcache/ckpt/model.pt", "wb") as f:
        torch.save(state, f)
    with _fresh().open("fluid://wcache/ckpt/model.pt", "rb") as f:
        got = torch.load(f, weights_only=True)
    assert all(torch.equal(state[k], got[k]) for k in state)
    dcp.save(state, storage_writer=FsspecWriter("fluid://wthrough/dcp/step-41"))
    assert any(p.endswith(".metadata") for p in _fresh().ls("fluid://wthrough/dcp/step-41",
                                                             detail=False))
    loaded = {k: torch.zeros_like(v) for k, v in state.items()}
    dcp.load(loaded, storage_reader=FsspecReader("fluid://wthrough/dcp/step-41"))
    assert all(torch.equal(state[k], loaded[k]) for k in state)


def test_pandas_to_parquet_and_back(wds):
    import pandas as pd
    df = pd.DataFrame({"id": range(5000), "x": [i * 0.25 for i in range(5000)]})
    df.to_parquet("fluid://wthrough/tables/out.parquet")
    df.to_csv("fluid://wlocal/tables/out.csv", index=False)
    pd.testing.assert_frame_equal(pd.read_parquet("fluid://wthrough/tables/out.parquet"), df)
    pd.testing.assert_frame_equal(pd.read_csv("fluid://wlocal/tables/out.csv"), df)


def test_ray_data_write_parquet_through_fluid(wds):
    script = textwrap.dedent("""
        import json, ray, fluidcache
        import fluidcache.integrations.ray_data as frd
        fluidcache.init_ray(log_to_driver=False)
        ds = ray.data.range(3000, override_num_blocks=3).map(
            lambda r: {"id": r["id"], "sq": r["id"] ** 2})
        frd.write_parquet(ds, "fluid://wcache/raydata/out")
        back = frd.read_parquet("fluid://wcache/raydata/out")
        print(json.dumps({"rows": back.count(), "sum": back.sum("sq")}))
        ray.shutdown()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, RAY_AUTH_MODE="token"))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    import json
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"rows": 3000, "sum": sum(i * i for i in range(3000))}
    files = wds["s3"].find("fc-write/cache/raydata/out")
    assert files and all(f.endswith(".parquet") for f in files)
