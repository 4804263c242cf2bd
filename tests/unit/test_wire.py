"""The wire format (fluidcache.wire): framing, limits, message validation, socket helpers."""
from __future__ import annotations

import socket
import struct
import threading

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidcache.errors import (
    AccessDenied, FluidError, InvalidRequest, NotFound, ProtocolError, StaleVersion,
)
from fluidcache.wire import (
    BlockRead, FrameDecoder, Reply, Request, pack, recv_reply, send_request,
)


def frames_of(data: bytes, **limits) -> list[tuple[dict, bytes]]:
    dec = FrameDecoder(**limits)
    dec.feed(data)
    out = []
    while (f := dec.next_frame()) is not None:
        out.append(f)
    return out


def raw_frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


# -- messages round trip ----------------------------------------------------------------

@pytest.mark.parametrize("req", [
    Request("ls"),
    Request("read", {"ds": "d", "p": "a/b", "b": 3}, id=7, namespace="team", token="s3cr3t"),
    Request("stat", {"p": ""}, id=2**40, namespace="ns"),
])
def test_request_round_trip(req):
    [(h, payload)] = frames_of(pack(req.header()))
    assert payload == b""
    assert Request.from_header(h) == req


@pytest.mark.parametrize("reply, payload", [
    (Reply(1, True, {"entries": [{"name": "x", "size": 3}]}), b""),
    (Reply(2, True, None, data_len=5), b"hello"),
    (Reply.failure(3, NotFound("no such file")), b""),
])
def test_reply_round_trip(reply, payload):
    [(h, got)] = frames_of(pack(reply.header()) + payload)
    assert got == payload
    assert Reply.from_header(h) == reply


def test_request_header_omits_absent_namespace_and_token():
    assert Request("ls", id=1).header() == {"i": 1, "op": "ls", "a": {}}


# -- streaming: any chunking gives the same frames ---------------------------------------

_values = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                    st.text(max_size=8), st.binary(max_size=8))
_header = st.dictionaries(st.text(max_size=4).filter(lambda k: k != "d"),
                          st.one_of(_values, st.lists(_values, max_size=3)), max_size=4)
_frame = st.tuples(_header, st.binary(max_size=300))


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(_frame, max_size=6), data=st.data())
def test_any_chunking_yields_the_same_frames(frames, data):
    stream = b""
    expected = []
    for h, payload in frames:
        h = dict(h, d=len(payload)) if payload else h
        stream += pack(h) + payload
        expected.append((h, payload))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    chunks = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
    dec, got = FrameDecoder(max_frame=4096, max_data=4096), []
    for chunk in chunks:
        dec.feed(chunk)
        while (f := dec.next_frame()) is not None:
            got.append(f)
    assert got == expected
    assert dec.next_frame() is None


# -- limits -------------------------------------------------------------------------------

def test_header_length_over_max_frame_raises_before_the_header_arrives():
    dec = FrameDecoder(max_frame=100)
    dec.feed(struct.pack(">I", 101))          # only the prefix: nothing to buffer yet
    with pytest.raises(ProtocolError, match="frame header"):
        dec.next_frame()


def test_header_length_at_max_frame_waits_for_the_body():
    dec = FrameDecoder(max_frame=100)
    dec.feed(struct.pack(">I", 100))
    assert dec.next_frame() is None


def test_payload_over_max_data_raises_before_the_payload_arrives():
    dec = FrameDecoder(max_data=10)
    dec.feed(pack({"d": 11}))                  # header only
    with pytest.raises(ProtocolError, match="payload"):
        dec.next_frame()
    # The decoder stays failed: it never hands out the refused header later.
    with pytest.raises(ProtocolError):
        dec.next_frame()


def test_payload_at_max_data_is_accepted():
    assert frames_of(pack({"d": 10}) + b"x" * 10, max_data=10) == [({"d": 10}, b"x" * 10)]


def test_feeding_more_than_one_frame_limit_without_a_break_raises():
    dec = FrameDecoder(max_frame=16, max_data=16)
    with pytest.raises(ProtocolError):
        dec.feed(b"\0" * (16 + 16 + 4 + 1))


@pytest.mark.parametrize("body", [
    b"\xc1",                       # a byte msgpack never uses
    b"\x92\x01",                   # a list of two with one element: truncated
    b"\x01\x02",                   # two objects where one map belongs
    b"",                           # nothing at all
])
def test_malformed_msgpack_raises(body):
    with pytest.raises(ProtocolError, match="malformed"):
        frames_of(raw_frame(body))


@pytest.mark.parametrize("obj", [[1, 2], "op", 5, None, b"x"])
def test_header_must_be_a_map(obj):
    with pytest.raises(ProtocolError, match="map"):
        frames_of(raw_frame(msgpack.packb(obj, use_bin_type=True)))


@pytest.mark.parametrize("d", [-1, True, False, "3", 1.5, [3], None])
def test_bad_payload_length_raises(d):
    with pytest.raises(ProtocolError, match="'d'"):
        frames_of(pack({"d": d}) + b"xxx")


@pytest.mark.parametrize("h", [
    {"a": {}},                                 # no op
    {"op": 3},
    {"op": b"ls"},
    {"op": "ls", "a": []},
    {"op": "ls", "a": "x"},
    {"op": "ls", "i": "1"},
    {"op": "ls", "i": 1.0},
    {"op": "ls", "ns": 5},
    {"op": "ls", "tk": b"token"},
])
def test_request_from_header_rejects_wrong_types(h):
    with pytest.raises(ProtocolError):
        Request.from_header(h)


@pytest.mark.parametrize("h", [{"i": 1}, {"ok": 1}, {"ok": "true"}, {"ok": True, "i": "1"},
                               {"ok": True, "d": "5"}])
def test_reply_from_header_rejects_wrong_types(h):
    with pytest.raises(ProtocolError):
        Reply.from_header(h)


# -- BlockRead -------------------------------------------------------------------------

GOOD = {"ds": "imagenet", "p": "train/0001.jpg", "v": "etag", "s": 100, "b": 0}


def test_block_read_round_trip_and_defaults():
    r = BlockRead.from_args(GOOD)
    assert (r.offset, r.length) == (0, -1)
    full = BlockRead("d", "p", "v", 10, 2, 3, 4)
    assert BlockRead.from_args(full.to_args()) == full


@pytest.mark.parametrize("missing", ["ds", "p", "v", "s", "b"])
def test_block_read_missing_key(missing):
    args = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(InvalidRequest):
        BlockRead.from_args(args)


@pytest.mark.parametrize("key, value", [
    ("s", -1), ("b", -1), ("o", -1), ("l", -2),
    ("s", True), ("b", False), ("o", True), ("l", True),
    ("s", "100"), ("b", 1.0), ("o", None), ("l", [1]),
    ("ds", 1), ("p", b"path"), ("v", None),
])
def test_block_read_rejects_bad_values(key, value):
    with pytest.raises(InvalidRequest):
        BlockRead.from_args({**GOOD, key: value})


def test_block_read_accepts_length_minus_one_and_zero():
    assert BlockRead.from_args({**GOOD, "l": -1}).length == -1
    assert BlockRead.from_args({**GOOD, "l": 0, "o": 0}).length == 0


@pytest.mark.parametrize("args", [None, [], "ds"])
def test_block_read_args_not_a_map(args):
    with pytest.raises(InvalidRequest):
        BlockRead.from_args(args)


# -- Reply.unwrap ------------------------------------------------------------------------

def test_unwrap_returns_the_result():
    assert Reply(1, True, {"x": 1}).unwrap() == {"x": 1}


@pytest.mark.parametrize("exc, builtin", [
    (NotFound("gone"), FileNotFoundError),
    (AccessDenied("no"), PermissionError),
    (InvalidRequest("bad"), ValueError),
    (StaleVersion("changed"), FluidError),
    (FileNotFoundError("plain"), FileNotFoundError),
    (PermissionError("plain"), PermissionError),
])
def test_unwrap_raises_the_mapped_error(exc, builtin):
    reply = Reply.from_header(frames_of(pack(Reply.failure(9, exc).header()))[0][0])
    with pytest.raises(builtin) as info:
        reply.unwrap()
    assert isinstance(info.value, FluidError)
    assert str(exc) in str(info.value)
    if isinstance(exc, FluidError):
        assert type(info.value) is type(exc)


def test_unwrap_of_an_unexpected_exception_is_internal():
    with pytest.raises(FluidError, match="KeyError") as info:
        Reply.failure(1, KeyError("k")).unwrap()
    assert info.value.code == "internal"


# -- blocking socket helpers over a socketpair -------------------------------------------

def _serve_one(sock: socket.socket, reply: Reply, payload: bytes, seen: list) -> None:
    dec = FrameDecoder(max_data=1 << 20)
    while (frame := dec.next_frame()) is None:
        chunk = sock.recv(65536)
        if not chunk:
            return
        dec.feed(chunk)
    seen.append(frame)
    sock.sendall(pack(reply.header()) + payload)


@pytest.mark.parametrize("req_payload", [b"", b"p" * 10, bytes(range(256)) * 300])
def test_send_request_and_recv_reply_over_a_socketpair(req_payload):
    client, server = socket.socketpair()
    reply_payload = b"block-bytes" * 1000
    seen: list = []
    t = threading.Thread(target=_serve_one, args=(
        server, Reply(5, True, {"n": 1}, data_len=len(reply_payload)), reply_payload, seen))
    t.start()
    try:
        req = Request("read", GOOD, id=5, namespace="ns", token="tk")
        send_request(client, req, req_payload)
        reply, data = recv_reply(client)
    finally:
        t.join(10)
        client.close()
        server.close()
    assert not t.is_alive()
    [(h, got_payload)] = seen
    assert Request.from_header(h) == req and got_payload == req_payload
    assert h.get("d", 0) == len(req_payload)
    assert reply == Reply(5, True, {"n": 1}, data_len=len(reply_payload))
    assert data == reply_payload and isinstance(data, (bytes, bytearray))


def test_recv_reply_error_reply_unwraps():
    client, server = socket.socketpair()
    with client, server:
        server.sendall(pack(Reply.failure(1, AccessDenied("bad token")).header()))
        reply, data = recv_reply(client)
    assert data == bytearray()
    with pytest.raises(PermissionError, match="bad token"):
        reply.unwrap()


def test_recv_reply_peer_closes_mid_frame():
    client, server = socket.socketpair()
    with client:
        server.sendall(pack({"i": 1, "ok": True, "d": 10}) + b"short")
        server.close()
        with pytest.raises(ConnectionError):
            recv_reply(client)


def test_recv_reply_enforces_limits():
    client, server = socket.socketpair()
    with client, server:
        server.sendall(struct.pack(">I", 101))
        with pytest.raises(ProtocolError):
            recv_reply(client, max_frame=100)
    client, server = socket.socketpair()
    with client, server:
        server.sendall(pack({"i": 1, "ok": True, "d": 11}))
        with pytest.raises(ProtocolError):
            recv_reply(client, max_data=10)


def test_boolean_ids_and_negative_payloads_are_refused():
    with pytest.raises(ProtocolError):
        Request.from_header({"op": "ping", "a": {}, "i": True})
    with pytest.raises(ProtocolError):
        Reply.from_header({"ok": True, "i": False})
    with pytest.raises(ProtocolError):
        Reply.from_header({"ok": True, "i": 1, "d": -1})
