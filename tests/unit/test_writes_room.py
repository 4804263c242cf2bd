"""The worker's write room without Ray: a local-file mount, a fake master and the real
Access. Offsets, namespace limits, the idle reaper, whole-or-nothing commits."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from fluidcache import config as fc_config
from fluidcache.errors import AccessDenied, InvalidRequest, NotFound, Unavailable
from fluidcache.understore import Mount
from fluidcache.wire import Request
from fluidcache.worker.access import Access
from fluidcache.worker.writes import Writes


def _room(tmp_path, mode="through", **cfg):
    record = {"name": "ds", "namespace": "t", "write_mode": mode, "uid": "u1",
              "mounts": [["", f"file://{tmp_path}", {}]]}
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

    return Writes(cfg, None, access, mount_of, tell, {}, []), told


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
        for _ in range(100):                                      # the reaper's period: 0.1 s
            if not w.sessions:
                break
            await asyncio.sleep(0.05)
        assert w.sessions == {} and w.counters["writes_aborted"] == 1
        assert list(tmp_path.iterdir()) == []
        with pytest.raises(NotFound):
            await w.handle(_req("write_close", {"w": sid}), b"")
        w.stop()
    _run(go())
