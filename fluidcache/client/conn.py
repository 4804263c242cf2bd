"""Pooled, persistent TCP connections to the master and the workers' data servers.

Owns: opening sockets lazily, reusing them, timeouts, and noticing a fork: a pool used
in a new process drops the parent's sockets and opens its own (fsspec #835).
Never: interpret replies beyond raising the error a reply carries.
"""
from __future__ import annotations

import itertools
import os
import socket
import threading

from .. import wire
from ..config import ClientSettings
from ..errors import ProtocolError, Unavailable


_DEFAULTS = ClientSettings()
FORKS = [0]     # bumped in every forked child: cheaper than comparing os.getpid() per call


def _forked() -> None:
    FORKS[0] += 1


os.register_at_fork(after_in_child=_forked)


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise Unavailable(f"bad address {address!r}: use host:port")
    return host.strip("[]"), int(port)


class Pool:
    def __init__(self, connect_timeout: float = _DEFAULTS.connect_timeout,
                 request_timeout: float = _DEFAULTS.request_timeout,
                 max_idle: int = 8, max_data: int = _DEFAULTS.max_data) -> None:
        """Timeouts in seconds; `max_data`: the largest reply payload it takes."""
        self.connect_timeout, self.request_timeout = connect_timeout, request_timeout
        self.max_idle, self.max_data = max_idle, max_data
        self._ids = itertools.count(1)
        self._idle: dict[str, list[socket.socket]] = {}
        self._lock = threading.Lock()
        self._gen = FORKS[0]

    def _take(self, address: str, fresh: bool = False) -> tuple[socket.socket, bool]:
        """A socket to `address` and whether it was reused from the idle pool."""
        with self._lock:
            if self._gen != FORKS[0]:       # forked: the parent's sockets are not ours
                self._idle, self._gen = {}, FORKS[0]
            idle = self._idle.get(address)
            if idle and not fresh:
                return idle.pop(), True
        host, port = split_address(address)
        try:
            sock = socket.create_connection((host, port), timeout=self.connect_timeout)
        except OSError as exc:
            raise Unavailable(f"cannot connect to {address}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.request_timeout)
        return sock, False

    def _give(self, address: str, sock: socket.socket) -> None:
        with self._lock:
            if self._gen == FORKS[0]:
                idle = self._idle.setdefault(address, [])
                if len(idle) < self.max_idle:
                    idle.append(sock)
                    return
        sock.close()

    def call(self, address: str, op: str, args: dict | None = None, namespace: str | None = None,
             token: str | None = None, into: memoryview | None = None, split=None,
             payload: bytes | memoryview = b""
             ) -> tuple[object, bytes | bytearray | memoryview | list]:
        """Send one request; returns (result, payload). Raises the reply's error, or
        Unavailable when the peer cannot be reached or the connection breaks. A payload
        of len(`into`) bytes is received straight into `into` (and returned as it);
        `split`: see wire.recv_reply; `payload`: bytes sent after the request's header
        (sent again on the one fresh try too: a write names its offset, so a chunk the
        peer did take is refused, never written twice)."""
        req = wire.Request(op, args or {}, next(self._ids), namespace, token)
        for attempt in (0, 1):
            sock, reused = self._take(address, fresh=attempt > 0)
            try:
                wire.send_request(sock, req, payload)
                reply, data = wire.recv_reply(sock, max_data=self.max_data, into=into,
                                                 split=split)
                break
            except (OSError, ProtocolError) as exc:
                sock.close()
                # a pooled socket the peer closed meanwhile (a restart): one fresh try
                if not (reused and isinstance(exc, ConnectionError)) or attempt:
                    raise Unavailable(f"{address} did not answer {op}: {exc}") from None
        if reply.id != req.id:
            sock.close()
            raise Unavailable(f"{address} answered out of order")
        self._give(address, sock)
        return reply.unwrap(), data

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for socks in idle.values():
            for s in socks:
                s.close()
