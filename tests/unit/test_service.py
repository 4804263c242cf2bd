"""The server shell on loopback, in-process (no Ray): malformed frames get an error and a
closed connection, others keep being served, requests may not carry payloads, and idle
connections are closed."""
from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from fluidcache import wire
from fluidcache.client.conn import Pool
from fluidcache.errors import InvalidRequest, ProtocolError, Unavailable
from fluidcache.service import Server


async def _echo(req, payload):
    if req.op == "cancelled":              # awaits something another task cancelled
        other = asyncio.get_running_loop().create_future()
        other.cancel()
        await other
    if req.op == "fail":
        raise InvalidRequest("asked to fail")
    if req.op == "boom":
        raise RuntimeError("a bug")
    return {"echo": req.args}, (b"x" * req.args["n"] if "n" in req.args else None)


@pytest.fixture()
def server():
    s = Server(_echo, idle_timeout=0.5, first_frame_timeout=0.5).start()
    yield s
    s.stop()


def _raw(server, data: bytes) -> dict:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as c:
        c.sendall(data)
        reply, _ = wire.recv_reply(c)
        assert c.recv(1) == b""               # and the server closed the connection
        return reply


def test_replies_errors_and_payloads(server):
    pool = Pool()
    assert pool.call(server.address, "hi", {"a": 1}) == ({"echo": {"a": 1}}, bytearray())
    assert pool.call(server.address, "hi", {"n": 70000})[1] == b"x" * 70000
    with pytest.raises(InvalidRequest):
        pool.call(server.address, "fail")
    with pytest.raises(Exception, match="a bug"):
        pool.call(server.address, "boom")
    assert pool.call(server.address, "hi", {"a": 2})[0] == {"echo": {"a": 2}}   # still serving


def test_a_handler_cancelled_from_inside_still_answers_and_the_connection_serves_on(server):
    """A handler that ends in a cancellation it did not ask for (it awaited something
    another task cancelled) gets its peer an error, never silence on that connection."""
    pool = Pool()
    with pytest.raises(Unavailable, match="cancelled"):
        pool.call(server.address, "cancelled")
    assert pool.call(server.address, "hi", {"a": 3})[0] == {"echo": {"a": 3}}


@pytest.mark.parametrize("frame", [
    struct.pack(">I", 2**31) + b"x",                                   # header over the limit
    struct.pack(">I", 3) + b"\xc1\xc1\xc1",                            # not msgpack
    wire.pack([1, 2, 3]),                                              # not a map
    wire.pack({"op": 5, "a": {}, "i": 1}),                             # wrong types
    wire.pack({"op": "hi", "a": {}, "i": 1, "d": 10}) + b"0123456789",  # a payload in a request
])
def test_malformed_frames_get_an_error_and_a_close(server, frame):
    reply = _raw(server, frame)
    assert not reply.ok and reply.error["code"] == ProtocolError.code
    assert Pool().call(server.address, "hi", {"a": 3})[0] == {"echo": {"a": 3}}
    assert server.protocol_errors >= 1


def test_idle_connections_are_closed_and_the_pool_reconnects(server):
    pool = Pool()
    assert pool.call(server.address, "hi")[0] == {"echo": {}}
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as idle:
        idle.settimeout(5)
        assert idle.recv(1) == b""              # closed by the server after 0.5 s of silence
    # the pool's own idle socket was closed the same way; the next call reconnects
    assert pool.call(server.address, "hi", {"b": 1})[0] == {"echo": {"b": 1}}


def test_a_wildcard_bind_is_advertised_as_this_nodes_address():
    from fluidcache.service import advertised
    assert advertised("0.0.0.0") not in ("0.0.0.0", "")
    assert advertised("::") != "::"
    assert advertised("127.0.0.1") == "127.0.0.1"
    s = Server(_echo, host="0.0.0.0").start()
    try:
        assert not s.address.startswith("0.0.0.0")
        assert Pool().call(s.address, "hi")[0] == {"echo": {}}       # and it answers there
    finally:
        s.stop()
