"""The serving processes' core (worker/serve.py) on real tier files, and the data server
sending file regions with sendfile (service.py): what is served, to whom, and what is
handed back to the worker (`not_here`)."""
from __future__ import annotations

import os
import random
import socket

import pytest

from fluidcache import blocks, wire
from fluidcache.errors import InvalidRequest, NotHere, ProtocolError
from fluidcache.service import Region, Server
from fluidcache.tiering import layout
from fluidcache.worker.serve import READV_MAX, Served

from ..helpers import wait_for

BS = 64 * 1024
NS, TOKEN = "team", "t0ken"


def _req(op, args, ns=NS, token=TOKEN):
    return wire.Request(op, args, 1, ns, token)


@pytest.fixture()
def tiers(tmp_path):
    """Two tiers; a 150,000-byte file of dataset team/ds: block 0 in the first, block 1
    in the second, block 2 not cached. Returns (Served, file bytes, fid)."""
    data = random.Random(1).randbytes(150_000)
    fid = blocks.file_id("s3://b/f", "e:1", NS)
    paths = [str(tmp_path / "mem"), str(tmp_path / "ssd")]
    for index, tier in ((0, paths[0]), (1, paths[1])):
        layout.write_block(tier, blocks.block_key(fid, index, BS),
                           data[index * BS:(index + 1) * BS],
                           layout.Meta(f"{NS}/ds", fid, index))
    served = Served(paths, BS, 4 * BS)
    served.tokens = {NS: TOKEN}
    return served, data, fid


def _args(fid, index, size=150_000, ds="ds", **kw):
    return {"ds": ds, "p": "f", "v": "e:1", "s": size, "b": index, "f": fid, **kw}


def _bytes_of(region_or_bytes):
    if isinstance(region_or_bytes, Region):
        try:
            return os.pread(region_or_bytes.fd, region_or_bytes.length, region_or_bytes.offset)
        finally:
            os.close(region_or_bytes.fd)
    return bytes(region_or_bytes)


def test_a_whole_block_goes_as_a_file_region_with_a_checksum_the_client_checks(tiers):
    served, data, fid = tiers
    for index in (0, 1):
        result, payload = served.fast(_req("read", _args(fid, index)), b"")
        assert isinstance(payload, Region)
        got = _bytes_of(payload)
        assert got == data[index * BS:(index + 1) * BS] and result["n"] == len(got)
        key = blocks.block_key(fid, index, BS)
        assert layout.checksum(key, got, layout.meta_bytes(f"{NS}/ds", fid, index)) == \
            result["x"]
    hits, keys = served.take()
    assert hits == {f"{NS}/ds": [2, 2 * BS]} and len(keys) == 2
    assert served.take() == ({}, [])


def test_a_part_of_a_block_is_verified_here_and_sliced(tiers, tmp_path):
    served, data, fid = tiers
    result, payload = served.fast(_req("read", _args(fid, 1, o=10, l=100)), b"")
    assert payload == data[BS + 10:BS + 110] and "x" not in result
    # the same part of a corrupted block is not served
    path = layout.block_path(str(tmp_path / "ssd"), blocks.block_key(fid, 1, BS))
    with open(path, "r+b") as f:
        f.seek(50)
        f.write(b"\xff" if data[BS + 50] != 0xFF else b"\x00")
    with pytest.raises(NotHere):
        served.fast(_req("read", _args(fid, 1, o=10, l=100)), b"")


@pytest.mark.parametrize("why, args, ns", [
    ("not cached", "uncached", NS),
    ("another namespace's block", None, "other"),
    ("another dataset's name", "ds2", NS),
    ("another block size", {"bs": 2 * BS}, NS),
    ("another file size (another block length)", {"s": 100_000, "b": 1}, NS),
    ("no file id", {"f": ""}, NS),
])
def test_what_this_process_cannot_vouch_for_goes_to_the_worker(tiers, why, args, ns):
    served, data, fid = tiers
    served.tokens["other"] = "other-token"
    if args is None:
        a = _args(fid, 0)
    elif args == "ds2":
        a = _args(fid, 0, ds="ds2")
    elif isinstance(args, dict):
        a = {**_args(fid, 0), **args}
    else:
        a = _args(fid, 2)                     # block 2 is in no tier
    token = "other-token" if ns == "other" else TOKEN
    with pytest.raises(NotHere) as err:
        served.fast(_req("read", a, ns, token), b"")
    assert not getattr(err.value, "close_after", False), why
    assert served.take() == ({}, [])


@pytest.mark.parametrize("ns, token", [(NS, "wrong"), (NS, None), ("unknown", TOKEN)])
def test_a_token_not_known_here_is_sent_to_the_worker_and_the_door_closed(tiers, ns, token):
    served, data, fid = tiers
    with pytest.raises(NotHere) as err:
        served.fast(_req("read", _args(fid, 0), ns, token), b"")
    assert err.value.close_after
    assert served.take() == ({}, [])


def test_other_ops_go_to_the_worker_and_ping_answers(tiers):
    served, _, _ = tiers
    for op in ("touch", "prefetch", "load", ""):
        with pytest.raises(NotHere):
            served.fast(_req(op, {}), b"")
    assert served.fast(_req("ping", {}), b"")[0]["pong"]


def test_a_batch_answers_each_read_in_order(tiers):
    served, data, fid = tiers
    reads = [_args(fid, 1), _args(fid, 2), _args(fid, 9), _args(fid, 0, o=5, l=7)]
    result, parts = served.fast(_req("readv", {"r": reads}), b"")
    items = result["items"]
    assert items[0]["n"] == BS and "x" in items[0]
    assert items[1] == {"miss": 1}                                 # not cached here
    assert items[2]["e"]["code"] == InvalidRequest.code           # past the end
    assert items[3]["n"] == 7 and "x" not in items[3]
    assert [_bytes_of(p) for p in parts] == [data[BS:2 * BS], data[5:12]]


@pytest.mark.parametrize("args", [
    {"r": [_args("0" * 32, 0)] * (READV_MAX + 1)},          # too many
    {"r": [_args("0" * 32, 0, size=4 * BS)] * 5},           # more bytes than max_data
    {"r": [1, 2]},                                           # not maps
])
def test_an_oversized_or_malformed_batch_is_a_protocol_error(tiers, args):
    served, _, _ = tiers
    with pytest.raises(ProtocolError):
        served.fast(_req("readv", args), b"")


def test_an_empty_batch_is_refused(tiers):
    served, _, _ = tiers
    with pytest.raises(InvalidRequest):
        served.fast(_req("readv", {"r": []}), b"")


def test_the_server_sends_file_regions_whole_also_past_the_socket_buffer(tmp_path):
    """A region far larger than a socket buffer: sendfile sends what fits, the rest is
    read and queued; a frame with two regions and bytes arrives whole, in order."""
    big = random.Random(2).randbytes(24 * 1024**2)
    path = tmp_path / "f"
    path.write_bytes(big)

    def fast(req, payload):
        fd1, fd2 = os.open(path, os.O_RDONLY), os.open(path, os.O_RDONLY)
        return {"ok": 1}, [Region(fd1, 7, len(big) - 7), b"mid", Region(fd2, 0, 1000)]

    async def slow(req, payload):
        raise AssertionError("not reached")

    server = Server(slow, fast=fast).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            for _ in range(3):
                wire.send_request(sock, wire.Request("x", {}, 1))
                reply, payload = wire.recv_reply(sock, max_data=64 * 1024**2)
                assert bytes(payload) == big[7:] + b"mid" + big[:1000]
    finally:
        server.stop()
    assert len(os.listdir(f"/proc/{os.getpid()}/fd")) < 200        # regions closed


def test_a_weak_version_is_the_workers_to_check(tiers):
    """A weak version (no validator from the store) is valid for one dataset incarnation
    and master run: only the worker knows its scope, so it is not served here."""
    served, data, fid = tiers
    with pytest.raises(NotHere):
        served.fast(_req("read", {**_args(fid, 0), "v": "w:scope:123"}), b"")


def test_a_batch_of_small_ranges_of_large_files_is_counted_by_its_bytes(tiers):
    """The byte budget counts what each read returns (blocks.reply_length), as the
    client splits batches: many small ranges of big files make one batch, not an error."""
    served, data, fid = tiers
    reads = [_args(fid, 9, size=100 * BS, o=0, l=10)] * READV_MAX   # 64 x 10 bytes
    result, parts = served.fast(_req("readv", {"r": reads}), b"")
    assert all(it == {"miss": 1} for it in result["items"]) and parts == []
    assert blocks.reply_length(150_000, BS, 2, 0, -1) == 150_000 - 2 * BS
    assert blocks.reply_length(150_000, BS, 3, 0, -1) == 0              # past the end
    assert blocks.reply_length(150_000, BS, 0, 10, 100) == 100
    assert blocks.reply_length(150_000, BS, 0, BS + 1, 5) == 0          # past the block


def test_a_read_error_is_not_here_and_a_batch_leaks_no_file(tiers, monkeypatch):
    """EIO on a part read: the worker is asked; the regions a batch opened before an
    unexpected error are closed."""
    served, data, fid = tiers

    def eio(*a):
        raise OSError(5, "Input/output error")

    def fds() -> int:
        return len(os.listdir(f"/proc/{os.getpid()}/fd"))

    monkeypatch.setattr(os, "pread", eio)
    with pytest.raises(NotHere):
        served.fast(_req("read", _args(fid, 0, o=1, l=10)), b"")
    monkeypatch.undo()
    before = fds()
    calls = []
    real = served._one

    def fails_second(ns, r):
        calls.append(r)
        if len(calls) == 2:
            raise RuntimeError("a bug")
        return real(ns, r)

    served._one = fails_second
    for _ in range(20):
        calls.clear()
        with pytest.raises(RuntimeError):
            served.fast(_req("readv", {"r": [_args(fid, 0), _args(fid, 1)]}), b"")
    assert fds() == before


def test_a_batch_to_a_peer_that_does_not_read_waits_as_open_files_not_bytes(tmp_path):
    """The parts of a reply the peer does not take wait as file regions: at most about
    one part's copy sits in the server's buffer, however large the batch."""
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(1 << 20))

    def fast(req, payload):
        return {"ok": 1}, [Region(os.open(blob, os.O_RDONLY), 0, 1 << 20) for _ in range(48)]

    async def slow(req, payload):
        raise AssertionError("not reached")

    server = Server(slow, fast=fast).start()
    try:
        peers = []
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", server.port))
            wire.send_request(s, wire.Request("big", {}, 1))
            peers.append(s)

        async def state():
            return [(c.transport.get_write_buffer_size(), len(c.out), c.paused)
                    for c in server._conns]

        got = wait_for(lambda: (now := server.call_soon(state()).result(5)) and len(now) == 4
                       and all(paused for _, _, paused in now) and now, 10,
                       "every connection to stop sending")
        for buffered, waiting, _ in got:
            assert buffered <= 2 * (1 << 20) and waiting >= 30   # the rest in the kernel
        peers[0].settimeout(10)    # a peer that reads after all gets the whole reply
        reply, payload = wire.recv_reply(peers[0], max_data=64 << 20)
        assert len(payload) == 48 << 20 and bytes(payload[-10:]) == blob.read_bytes()[-10:]
        for s in peers:
            s.close()
        wait_for(lambda: not server.call_soon(state()).result(5), 10, "the connections gone")
    finally:
        server.stop()


def test_the_reports_stop_while_the_loop_is_stuck_and_come_back_after(tiers):
    """A stalled disk blocks a serving process's loop: no report meanwhile (its worker
    kills one that stays silent), and reports go on once the loop moves again."""
    import io
    import json
    import threading

    from fluidcache.worker.serve import _report_loop
    served, data, fid = tiers
    server = Server(served.slow, fast=served.fast).start()
    out, stop = io.StringIO(), threading.Event()
    reporter = threading.Thread(target=_report_loop, args=(served, server, 0.05, stop, out),
                                kwargs={"stuck_after": 0.2}, daemon=True)
    reporter.start()
    try:
        wait_for(lambda: out.getvalue().count("\n") >= 2, 10, "two reports")
        unstick = threading.Event()
        server.loop.call_soon_threadsafe(unstick.wait, 10)      # the loop stuck
        wait_for(lambda: served.stalls >= 1, 10, "a report skipped")
        during = out.getvalue().count("\n")
        wait_for(lambda: served.stalls >= 3, 10, "two more skipped")
        assert out.getvalue().count("\n") == during             # none while stuck
        unstick.set()
        served.fast(_req("read", _args(fid, 0)), b"")[1]
        wait_for(lambda: '"team/ds"' in out.getvalue() or not reporter.is_alive(), 10,
                 "the hit, reported after")
        last = json.loads(out.getvalue().splitlines()[-1])
        assert reporter.is_alive() and last["st"] >= 3            # the stalls, reported
    finally:
        stop.set()
        server.stop()
