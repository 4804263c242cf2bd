"""The worker's write room without Ray: a local-file mount, a fake master and the real
Access. Offsets, namespace limits, the idle reaper, whole-or-nothing commits."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import threading
import time

import pytest

from fluidcache import config as fc_config
from fluidcache.errors import AccessDenied, InvalidRequest, NotFound, Unavailable
from fluidcache.understore import Mount
from fluidcache.wire import Request
from fluidcache.worker.access import Access
from fluidcache.worker.journal import Journal
from fluidcache.worker.pending import Pending
from fluidcache.worker.writes import Writes


def _room(tmp_path, mode="through", journal_dir=None, ttl=None, **cfg):
    record = {"name": "ds", "namespace": "t", "write_mode": mode, "uid": "u1",
              "mounts": [["", f"file://{tmp_path}", {}]], "write_ttl": ttl}
    told = []

    async def ask_tokens():
        return {"t": "tok", "u": "tok2", "default": "adm"}

    async def ask_dataset(ns, name):
        if name != "ds":
            raise RuntimeError(f"no dataset {name!r}")
        return dict(record, namespace=ns)

    async def tell(ns, name, path, uid):
        told.append((ns, name, path, uid))
        return {"name": f"{name}/{path}", "size": (tmp_path / path).stat().st_size,
                "type": "file", "version": "w:x", "fid": "f"}

    access = Access(ask_tokens, ask_dataset, 60.0, 10, lambda ns, n: None)
    cfg = dataclasses.replace(fc_config.load(), **cfg)
    mounts = {}

    def mount_of(ns, ds, spec):
        return mounts.setdefault((ns, spec.url), Mount(spec.url, spec.options))

    async def ask(method, *args):           # the master's side of kept files
        told.append((method, *args[:5]) if method != "add" else ("add", args[0]["path"]))
        if method == "add":
            return {"state": "ok", "entry": {"name": "ds/" + args[0]["path"]}, "inc": "i1"}
        return {"state": "go"} if method == "begin" else {"entry": None}

    journal = Journal(str(journal_dir or tmp_path.parent / f"{tmp_path.name}-journal"),
                      cfg.block_size,
                      cfg.write_journal or 64 * 1024**2)
    pending = Pending(cfg, "node1", journal, access, mount_of, ask)
    return Writes(cfg, None, access, mount_of, tell, {}, [], pending), told


def _req(op, args, ns="t", token="tok"):
    return Request(op, args, 1, ns, token)


def _run(coro):
    return asyncio.run(coro)


def test_a_file_is_written_whole_in_order_and_only_at_close(tmp_path):
    async def go():
        w, told = _room(tmp_path)
        sid = (await w.handle(_req("write_open", {"ds": "ds", "p": "a/b.bin"}), b""))[0]["w"]
        await w.handle(_req("write", {"w": sid, "o": 0}), b"hello ")
        assert not (tmp_path / "a" / "b.bin").exists()           # nothing before close
        with pytest.raises(InvalidRequest, match="in order"):
            await w.handle(_req("write", {"w": sid, "o": 3}), b"x")
        with pytest.raises(NotFound):                             # that aborted it
            await w.handle(_req("write", {"w": sid, "o": 6}), b"x")
        assert list((tmp_path / "a").iterdir()) == []             # no temporary file left
        sid = (await w.handle(_req("write_open", {"ds": "ds", "p": "a/b.bin"}), b""))[0]["w"]
        for off, piece in ((0, b"hello "), (6, b"world")):
            await w.handle(_req("write", {"w": sid, "o": off}), piece)
        await w.handle(_req("write_close", {"w": sid}), b"")
        assert (tmp_path / "a" / "b.bin").read_bytes() == b"hello world"
        assert told == [("t", "ds", "a/b.bin", "u1")]
        assert w.counters["files_written"] == 1 and w.sessions == {}
    _run(go())


@pytest.mark.parametrize("args, why", [
    ({"w": "x", "o": True}, "integer offset"), ({"w": "x", "o": "0"}, "integer offset"),
    ({"w": "x"}, "integer offset")])
def test_bad_offsets_get_clear_errors(tmp_path, args, why):
    async def go():
        w, _ = _room(tmp_path)
        sid = (await w.handle(_req("write_open", {"ds": "ds", "p": "f"}), b""))[0]["w"]
        with pytest.raises(InvalidRequest, match=why):
            await w.handle(_req("write", dict(args, w=sid)), b"x")
    _run(go())


def test_sessions_belong_to_their_namespace_and_are_shared_out(tmp_path):
    async def go():
        w, _ = _room(tmp_path, write_sessions=4)
        sid = (await w.handle(_req("write_open", {"ds": "ds", "p": "f"}), b""))[0]["w"]
        with pytest.raises(NotFound):
            await w.handle(_req("write_close", {"w": sid}, ns="u", token="tok2"), b"")
        with pytest.raises(AccessDenied):
            await w.handle(_req("write_close", {"w": sid}, token="nope"), b"")
        await w.handle(_req("write_open", {"ds": "ds", "p": "g"}), b"")
        with pytest.raises(Unavailable, match="limits"):         # half of 4 per namespace
            await w.handle(_req("write_open", {"ds": "ds", "p": "h"}), b"")
        for ns, tok in (("u", "tok2"), ("default", "adm")):       # others still may
            await w.handle(_req("write_open", {"ds": "ds", "p": "i"}, ns=ns, token=tok), b"")
    _run(go())


def test_a_read_only_dataset_takes_no_session(tmp_path):
    async def go():
        w, _ = _room(tmp_path, mode="read-only")
        with pytest.raises(AccessDenied):
            await w.handle(_req("put", {"ds": "ds", "p": "f"}), b"x")
        assert list(tmp_path.iterdir()) == []
    _run(go())


def test_an_idle_session_is_aborted_and_leaves_nothing(tmp_path):
    async def go():
        w, _ = _room(tmp_path, write_idle=0.2)
        sid = (await w.handle(_req("write_open", {"ds": "ds", "p": "idle.bin"}), b""))[0]["w"]
        await w.handle(_req("write", {"w": sid, "o": 0}), b"abc")
        for _ in range(100):      # the reaper's period: 0.1 s; the session goes first,
            if not w.sessions and not list(tmp_path.iterdir()):    # its file after it
                break
            await asyncio.sleep(0.05)
        assert w.sessions == {} and w.counters["writes_aborted"] == 1
        assert list(tmp_path.iterdir()) == []
        with pytest.raises(NotFound):
            await w.handle(_req("write_close", {"w": sid}), b"")
        w.stop()
    _run(go())


def _write(w, path, data: bytes, ns="t", token="tok"):
    async def go():
        sid = (await w.handle(_req("write_open", {"ds": "ds", "p": path}, ns, token),
                              b""))[0]["w"]
        await w.handle(_req("write", {"w": sid, "o": 0}, ns, token), data)
        return (await w.handle(_req("write_close", {"w": sid}, ns, token), b""))[0]
    return go()


def test_async_through_is_kept_first_then_uploaded_in_the_background(tmp_path):
    store = tmp_path / "store"
    store.mkdir()

    async def go():
        w, told = _room(store, "async-through", journal_dir=tmp_path / "j",
                        block_size=64 * 1024)
        body = bytes(range(256)) * 1000                        # 4 blocks
        reply = await _write(w, "a/ck.bin", body)
        assert reply["entry"]["name"] == "ds/a/ck.bin"
        assert not (store / "a" / "ck.bin").exists()           # acknowledged, not uploaded
        assert told == [("add", "a/ck.bin")]
        assert w.pending.stats()["uploads_pending"] == 1
        w.pending.start()
        assert await w.pending.flush(30)
        assert (store / "a" / "ck.bin").read_bytes() == body
        assert [t[0] for t in told] == ["add", "begin", "done"]
        w.pending.stop()
    _run(go())


def test_a_restarted_worker_finds_its_kept_files_and_drops_unacknowledged_ones(tmp_path):
    store = tmp_path / "store"
    store.mkdir()

    async def first():
        w, _ = _room(store, "async-through", journal_dir=tmp_path / "j")
        await _write(w, "k.bin", b"kept" * 1000)
        sid = (await w.handle(_req("write_open", {"ds": "ds", "p": "half.bin"}), b""))[0]["w"]
        await w.handle(_req("write", {"w": sid, "o": 0}), b"never closed")
        # (killed here: nothing stops, nothing is flushed)

    async def second():
        w, told = _room(store, "async-through", journal_dir=tmp_path / "j")
        assert w.pending.adopt() == 1                          # the closed one only
        assert sorted(os.listdir(tmp_path / "j")) == sorted(
            f"{e}{x}" for e in w.pending.entries for x in (".data", ".meta"))
        w.pending.start()
        assert await w.pending.flush(30)
        assert (store / "k.bin").read_bytes() == b"kept" * 1000
        assert not (store / "half.bin").exists()
        assert told[0] == ("add", "k.bin")                     # told again
        w.pending.stop()

    async def third():                        # uploaded: never adopted (nor uploaded) again
        w, told = _room(store, "async-through", journal_dir=tmp_path / "j")
        assert w.pending.adopt() == 0 and told == []
    _run(first())
    _run(second())
    _run(third())


def test_kept_bytes_are_read_by_offset_whatever_the_block_size(tmp_path):
    from fluidcache.worker.journal import Journal
    j = Journal(str(tmp_path), 1000, 10**6)
    body = bytes(range(256)) * 20                              # 5,120 bytes: 6 blocks
    f = j.open("abc1", "t")
    f.write(body[:1234])
    f.write(body[1234:])
    e = f.commit(ns="t", ds="d", uid="u", path="p", mode="must-cache", closed=0.0,
                 expires=0.0)
    for start, n in ((0, 5120), (1500, 2000), (999, 2), (5000, 120), (4096, 1024)):
        assert j.read(e, start, n) == body[start:start + n]    # e.g. read in 4 KiB blocks
    f.abort()                                                  # (twice: counted once)
    f.abort()
    assert j.used == 0 and j.by_ns == {}


def test_a_damaged_kept_block_is_an_error_never_wrong_bytes(tmp_path):
    from fluidcache.errors import FluidError
    from fluidcache.understore.versions import cached_version
    from fluidcache.wire import BlockRead

    async def go():
        w, _ = _room(tmp_path / "s", "must-cache", journal_dir=tmp_path / "j")
        (tmp_path / "s").mkdir()
        await _write(w, "x.bin", b"a" * 5000)
        (fid, e), = w.pending.entries.items()
        r = BlockRead("ds", "x.bin", cached_version("node1", fid), 5000, 0, 0, -1)
        assert await w.pending.read("t", r) == b"a" * 5000
        with pytest.raises(FluidError, match="not kept here"):   # another namespace's
            await w.pending.read("u", r)
        with open(tmp_path / "j" / f"{fid}.data", "r+b") as f:
            f.write(b"b")
        with pytest.raises(FluidError, match="damaged"):
            await w.pending.read("t", r)
    _run(go())


def test_a_full_journal_refuses_the_write_and_keeps_nothing_of_it(tmp_path):
    async def go():
        w, _ = _room(tmp_path, "must-cache", journal_dir=tmp_path / "j",
                     write_journal=200_000)
        await _write(w, "fits.bin", b"x" * 60_000)
        with pytest.raises(Unavailable, match="journal is full.*namespace t"):
            await _write(w, "big.bin", b"y" * 60_000)          # over t's half
        assert len(os.listdir(tmp_path / "j")) == 2            # fits.bin's data and meta
        assert w.pending.journal.used == 60_000
        await _write(w, "other.bin", b"z" * 90_000, "u", "tok2")   # u has its own half
        assert w.pending.journal.by_ns == {"t": 60_000, "u": 90_000}
    _run(go())


@pytest.mark.parametrize("then", ["write", "write_close"])
def test_a_chunk_written_behind_its_reply_fails_the_next_request_and_keeps_nothing(
        tmp_path, then):
    """A write's reply says its chunk was taken (the chunk is written while the next one
    arrives); a chunk that then fails to be written fails the next write or the close,
    and the file is aborted: nothing of it is kept, the session is gone."""
    async def go():
        w, _ = _room(tmp_path, "must-cache", journal_dir=tmp_path / "j",
                     write_journal=200_000)
        sid = (await w.handle(_req("write_open", {"ds": "ds", "p": "f.bin"}), b""))[0]["w"]
        await w.handle(_req("write", {"w": sid, "o": 0}), b"a" * 60_000)
        # over the namespace's half of the journal: taken, written behind, fails there
        assert (await w.handle(_req("write", {"w": sid, "o": 60_000}), b"b" * 60_000)
                )[0] == {"n": 120_000}
        args = {"w": sid, "o": 120_000} if then == "write" else {"w": sid}
        with pytest.raises(Unavailable, match="journal is full"):
            await w.handle(_req(then, args), b"c" if then == "write" else b"")
        with pytest.raises(NotFound):                      # aborted
            await w.handle(_req("write_close", {"w": sid}), b"")
        assert os.listdir(tmp_path / "j") == [] and w.pending.journal.used == 0
        assert w.counters["writes_aborted"] == 1 and not w._tasks
    _run(go())


def test_must_cache_is_never_uploaded_and_goes_at_its_ttl(tmp_path):
    async def go():
        w, told = _room(tmp_path, "must-cache", journal_dir=tmp_path / "j", ttl=0.2)
        await _write(w, "t.bin", b"t" * 10)
        w.pending.start()
        deadline = asyncio.get_running_loop().time() + 30
        # polling a condition: the TTL's end (the entry goes first, then its journal files,
        # on an executor thread)
        while (w.pending.entries or os.listdir(tmp_path / "j")) and \
                asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        assert not w.pending.entries and os.listdir(tmp_path / "j") == []
        assert [t[0] for t in told] == ["add", "gone"]
        assert not (tmp_path / "t.bin").exists()
        w.pending.stop()
    _run(go())


def test_a_kept_file_has_its_writeback_started_as_it_is_written(tmp_path, monkeypatch):
    """Every _WRITEBACK_EVERY bytes the disk is told to start writing what came (Linux's
    sync_file_range: the commit's fsync then finds little left); the bytes kept are
    the bytes written."""
    from fluidcache.worker import journal as jmod
    if not sys.platform.startswith("linux"):
        pytest.skip("sync_file_range is Linux's; elsewhere the fsync at commit does it all")
    assert jmod._writeback is not None
    calls = []

    def spy(fd, offset, n):
        calls.append((offset, n))
        assert jmod._writeback_real(fd, offset, n) == 0     # the kernel took the call

    monkeypatch.setattr(jmod, "_writeback_real", jmod._writeback, raising=False)
    monkeypatch.setattr(jmod, "_writeback", spy)
    monkeypatch.setattr(jmod, "_WRITEBACK_EVERY", 100_000)
    j = Journal(str(tmp_path / "j"), 64 * 1024, 10 * 1024**2)
    f = j.open("abc1", "t")
    body = os.urandom(350_000)
    for i in range(0, len(body), 60_000):
        f.write(body[i:i + 60_000])
    e = f.commit(ns="t", ds="ds", uid="u1", path="p", mode="must-cache", closed=0.0,
                 expires=0.0)
    assert calls == [(0, 120_000), (120_000, 120_000), (240_000, 110_000)]
    assert j.read(e, 0, len(body)) == body


def test_an_abort_while_a_write_waits_for_the_chunk_before_answers_that_write(
        tmp_path, monkeypatch):
    """A write waiting for the chunk before it to be written, and a write_abort (from
    another connection) meanwhile: the waiting write hears the file was aborted (an
    error the server sends back), never a bare cancellation that would leave its
    connection waiting for a reply for ever."""
    from fluidcache.worker import writes as wmod
    gate = threading.Event()
    real = wmod.Writes._write_under

    def slow(self, s, data):
        if data.startswith(b"A"):
            gate.wait(10)                 # the first chunk's write is slow
        return real(self, s, data)

    monkeypatch.setattr(wmod.Writes, "_write_under", slow)

    async def go():
        w, _ = _room(tmp_path)
        sid = (await w.handle(_req("write_open", {"ds": "ds", "p": "f"}), b""))[0]["w"]
        await w.handle(_req("write", {"w": sid, "o": 0}), b"A" * 10)     # taken
        nxt = asyncio.ensure_future(w.handle(_req("write", {"w": sid, "o": 10}),
                                             b"B" * 10))
        s = w.sessions[sid]
        for _ in range(10_000):           # until the second write waits for the first
            if s.busy.locked():
                break
            await asyncio.sleep(0)
        assert s.busy.locked() and not nxt.done()
        abort = asyncio.ensure_future(w.handle(_req("write_abort", {"w": sid}), b""))
        try:
            with pytest.raises(NotFound, match="aborted"):
                await asyncio.wait_for(nxt, 5)    # answered while the thread still runs
        finally:
            gate.set()
        assert (await abort)[0] == {"aborted": True}
        assert not (tmp_path / "f").exists()
    _run(go())


def test_a_session_whose_chunk_is_still_being_written_is_not_idle(tmp_path, monkeypatch):
    from fluidcache.worker import writes as wmod
    gate = threading.Event()
    real = wmod.Writes._write_under
    monkeypatch.setattr(wmod.Writes, "_write_under",
                        lambda self, s, data: (gate.wait(10), real(self, s, data))[1])

    async def go():
        w, _ = _room(tmp_path)
        sid = (await w.handle(_req("write_open", {"ds": "ds", "p": "f"}), b""))[0]["w"]
        await w.handle(_req("write", {"w": sid, "o": 0}), b"A" * 10)     # taken
        later = time.monotonic() + 3600
        assert w.idle(later) == []              # its chunk is being written: not idle
        gate.set()
        await w.sessions[sid].inflight
        assert w.idle(later) == [w.sessions[sid]]
    _run(go())
