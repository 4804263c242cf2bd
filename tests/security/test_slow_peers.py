"""No peer can starve a server: slowloris connections that trickle a frame a byte at a
time, and squatters that connect and say nothing, while a normal client keeps being
served (in-process server on loopback, small limits so the test is quick)."""
from __future__ import annotations

import socket
import struct
import threading
import time

from fluidcache.client.conn import Pool
from fluidcache.errors import AccessDenied
from fluidcache.service import Server


async def _handler(req, payload):
    if req.token != "right":
        raise AccessDenied("wrong token")
    if req.op == "hang":                       # a request whose store never answers
        import asyncio
        await asyncio.Event().wait()
    return {"ok": True}, (b"x" * (1 << 20) if req.op == "big" else None)


def _served(server, within: float) -> float:
    """A normal client asks until it is served (retrying a refused connection, as
    clients do); returns how long it took, AssertionError past `within` seconds."""
    t0 = time.monotonic()
    pool = Pool(connect_timeout=2, request_timeout=3)
    while True:
        try:
            assert pool.call(server.address, "ping", {}, "ns", "right")[0] == {"ok": True}
            return time.monotonic() - t0
        except Exception:                      # noqa: BLE001 - bounded below
            assert time.monotonic() - t0 < within, "the normal client was never served"
            pool = Pool(connect_timeout=2, request_timeout=3)
            time.sleep(0.05)                   # the client's backoff


def _closed(sock: socket.socket) -> bool:
    """Did the server close it? (A timeout means it is still open.)"""
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except (ConnectionError, OSError):
        return True


def test_slowloris_and_squatters_cannot_hold_the_servers_slots():
    server = Server(_handler, max_connections=40, frame_timeout=1.0,
                    first_frame_timeout=1.0, idle_timeout=60.0).start()
    try:
        stop = threading.Event()
        slow = []
        for _ in range(60):                   # more than every slot
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            s.sendall(struct.pack(">I", 200))  # a frame begun ...
            slow.append(s)
        squat = [socket.create_connection(("127.0.0.1", server.port), timeout=5)
                 for _ in range(30)]           # ... and peers that say nothing at all

        def trickle():                         # ... a byte every 0.2 s, forever
            while not stop.is_set():
                for s in slow:
                    try:
                        s.sendall(b"\x80")
                    except OSError:
                        pass
                stop.wait(0.2)
        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        worst = 0.0
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:     # a normal client, all along
            worst = max(worst, _served(server, within=3))
        stop.set()
        t.join(2)
        for s in slow + squat:
            s.settimeout(3)
        assert all(_closed(s) for s in slow), "a trickled frame held its slot"
        assert all(_closed(s) for s in squat), "a silent connection held its slot"
        assert server.timeouts >= 1 and worst < 3.0, (server.timeouts, worst)
        for s in slow + squat:
            s.close()
    finally:
        server.stop()


def test_a_wrong_token_closes_the_connection():
    server = Server(_handler).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as c:
            from fluidcache import wire
            wire.send_request(c, wire.Request("ping", {}, 1, "ns", "guess"))
            reply, _ = wire.recv_reply(c)
            assert not reply.ok and reply.error["code"] == "access_denied"
            c.settimeout(3)
            assert _closed(c)                  # no second guess on the same connection
        assert Pool().call(server.address, "ping", {}, "ns", "right")[0] == {"ok": True}
    finally:
        server.stop()


def test_peers_that_ask_and_never_read_the_replies_lose_their_slots():
    """Each sends 16 reads of a 1 MiB reply and never reads: the server stops reading
    from it (flow control) with requests pending. It must still give the slot back."""
    server = Server(_handler, max_connections=8, frame_timeout=1.0,
                    first_frame_timeout=1.0, idle_timeout=60.0).start()
    try:
        hogs = _peers(server, 12, "big", pipelined=16, rcvbuf=4096)
        _served(server, within=5)
        for s in hogs:
            s.close()
    finally:
        server.stop()


def _peers(server, n: int, op: str, pipelined: int = 1, rcvbuf: int = 0) -> list:
    """`n` connections, each sending `pipelined` requests of `op` and reading nothing."""
    from fluidcache import wire
    peers = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.sendall(b"".join(wire.pack(wire.Request(op, {}, i, "ns", "right").header())
                           for i in range(pipelined)))
        peers.append(s)
    return peers


def test_requests_that_never_end_do_not_hold_the_slots():
    """Seen: 64 reads of one hanging block held every slot of a worker, even after their
    peers left. A request has a deadline, and a full server evicts the longest-running."""
    from fluidcache import wire
    server = Server(_handler, max_connections=8, frame_timeout=1.0, first_frame_timeout=5.0,
                    request_timeout=3.0).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as one:
            one.sendall(wire.pack(wire.Request("hang", {}, 99, "ns", "right").header()))
            reply, _ = wire.recv_reply(one)        # it ends by its deadline, with an error
            assert not reply.ok and "longer than" in reply.error["message"]
        stuck = _peers(server, 8, "hang")
        _served(server, within=5)
        for s in stuck:
            s.close()
    finally:
        server.stop()


def test_peers_that_never_read_file_regions_hold_no_slot_and_no_file(tmp_path):
    """The serving processes' replies are file regions (sendfile): peers that ask for
    many and never read stall nobody else, and every region's file is closed, sent or
    not, when their connections go."""
    import os

    from fluidcache.service import Region
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(1 << 20))

    def fast(req, payload):
        if req.op == "big":
            return {"ok": True}, Region(os.open(blob, os.O_RDONLY), 0, 1 << 20)
        return {"ok": True}, None

    def fds() -> int:
        return len(os.listdir(f"/proc/{os.getpid()}/fd"))

    before = fds()
    server = Server(_handler, fast=fast, max_connections=8, frame_timeout=1.0,
                    first_frame_timeout=1.0, idle_timeout=60.0).start()
    try:
        hogs = _peers(server, 12, "big", pipelined=16, rcvbuf=4096)
        _served(server, within=5)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as ok:
            from fluidcache import wire
            wire.send_request(ok, wire.Request("big", {}, 1, "ns", "right"))
            _, data = wire.recv_reply(ok)
            assert bytes(data) == blob.read_bytes()
        for s in hogs:
            s.close()
    finally:
        server.stop()
    assert fds() <= before + 2          # (the server's own loop may keep one or two)
