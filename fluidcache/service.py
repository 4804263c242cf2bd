"""A msgpack/TCP server on uvloop, run in a thread of its own (inside a Ray actor).

Owns: accepting connections, reading frames within the limits, dispatching each request
to a handler (a synchronous fast path, else an async one), writing replies, and turning any failure into an error reply. A
malformed frame gets a `protocol` error reply and the connection is closed; the server
keeps serving everyone else.
Never: hold state of its own beyond connections; the handler owns the logic.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Awaitable, Callable

import uvloop

from . import wire
from .errors import FluidError, ProtocolError

log = logging.getLogger(__name__)

# handler(request, payload) -> (result, payload bytes or None)
Handler = Callable[[wire.Request, bytes], Awaitable[tuple[object, object]]]
# fast(request, payload) -> (result, payload) when it can answer without waiting, else None
FastHandler = Callable[[wire.Request, bytes], "tuple[object, object] | None"]


def bind_host(host: str) -> str:
    """`auto` binds to this Ray node's address (cluster mode); anything else as given."""
    if host == "auto":
        import ray
        return ray.util.get_node_ip_address()
    return host


class Server:
    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0,
                 max_frame: int = wire.DEFAULT_MAX_FRAME, max_data: int = 0,
                 max_connections: int = 1024, name: str = "fluidcache-server",
                 idle_timeout: float = 300.0, fast: FastHandler | None = None) -> None:
        """`max_data`: the largest payload a *request* may carry (no op takes one today,
        so 0); `idle_timeout`: a connection silent for this long between or within
        frames is closed (clients reconnect), so idle peers cannot hold every slot."""
        self.handler, self.fast, self.host, self.port = handler, fast, host, port
        self.max_frame, self.max_data = max_frame, max_data
        self.idle_timeout = idle_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.connections = 0
        self.protocol_errors = 0

    def start(self, timeout: float = 30.0) -> "Server":
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("server did not start in time")
        if self._error is not None:
            raise self._error
        return self

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def _run(self) -> None:
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self._server = self.loop.run_until_complete(
                self.loop.create_server(self._protocol, self.host, self.port))
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def call_soon(self, coro) -> "asyncio.Future":
        """Run a coroutine on the server's loop from another thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        if self.loop is None or self.loop.is_closed():
            return

        async def _close():
            self._server.close()
            self.loop.stop()

        try:
            self.call_soon(_close())
        except RuntimeError:
            pass
        self._thread.join(5)

    def _protocol(self) -> "_Connection":
        return _Connection(self)

    def _reply(self, rid: int, outcome) -> tuple[bytes, object]:
        """(head, payload) for a handler's outcome: (result, data) or an exception."""
        if isinstance(outcome, BaseException):
            return wire.pack(wire.Reply.failure(rid, outcome).header()), None
        result, data = outcome
        try:
            head = wire.pack(wire.Reply(rid, True, result,
                                        data_len=len(data) if data else 0).header())
        except (TypeError, ValueError) as exc:   # result not serializable
            return wire.pack(wire.Reply.failure(rid, exc).header()), None
        return head, data


class _Connection(asyncio.Protocol):
    """One client connection: frames decoded as bytes arrive (sans-I/O decoder), handled
    one at a time in order. A handler's `fast` path (no awaiting: a block in the memory
    tier) replies inside the same callback; the rest run as a task. Reading pauses while
    the peer does not take our replies (flow control) and while a request is handled."""

    def __init__(self, server: Server) -> None:
        self.s = server
        self.dec = wire.FrameDecoder(server.max_frame, server.max_data)
        self.pending: collections.deque = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.busy = self.paused = self.closing = self.counted = False
        self.last = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        if not self.s._slots.acquire(blocking=False):
            self.closing = True
            transport.close()
            return
        self.counted = True
        self.s.connections += 1
        self.last = self.s.loop.time()
        self.timer = self.s.loop.call_later(self.s.idle_timeout, self._check_idle)

    def connection_lost(self, exc) -> None:
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
        if self.counted:
            self.counted = False
            self.s.connections -= 1
            self.s._slots.release()

    def _check_idle(self) -> None:
        """Close a connection silent for idle_timeout (between or within frames)."""
        idle = self.s.loop.time() - self.last
        if self.busy:
            idle = 0.0                           # we owe it a reply: not the peer's silence
        if idle >= self.s.idle_timeout:
            self.transport.close()
        else:
            self.timer = self.s.loop.call_later(self.s.idle_timeout - idle, self._check_idle)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last = self.s.loop.time()
        try:
            self.dec.feed(data)
            while (frame := self.dec.next_frame()) is not None:
                self.pending.append(frame)
        except ProtocolError as exc:
            self._fatal(0, exc)
            return
        self._pump()

    def eof_received(self) -> bool:
        return False                             # close our side too

    def pause_writing(self) -> None:
        self.paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if not self.busy:
            self.transport.resume_reading()
        self._pump()

    def _fatal(self, rid: int, exc: ProtocolError) -> None:
        self.s.protocol_errors += 1
        self.transport.write(self.s._reply(rid, exc)[0])
        self.closing = True
        self.pending.clear()
        self.transport.close()

    def _pump(self) -> None:
        while self.pending and not (self.busy or self.paused or self.closing):
            header, payload = self.pending.popleft()
            try:
                req = wire.Request.from_header(header)
            except ProtocolError as exc:
                rid = header.get("i", 0)
                self._fatal(rid if isinstance(rid, int) else 0, exc)
                return
            fast = self.s.fast
            if fast is not None:
                try:
                    outcome = fast(req, payload)
                except FluidError as exc:
                    outcome = exc
                except Exception as exc:  # a bug: reply, log, keep serving
                    log.exception("handler failed on %s", req.op)
                    outcome = exc
                if outcome is not None:
                    self._send(req.id, outcome)
                    continue
            self.busy = True
            self.transport.pause_reading()
            self.s.loop.create_task(self._slow(req, payload))

    async def _slow(self, req: wire.Request, payload: bytes) -> None:
        try:
            outcome = await self.s.handler(req, payload)
        except FluidError as exc:
            outcome = exc
        except Exception as exc:  # a bug: reply, log, keep serving
            log.exception("handler failed on %s", req.op)
            outcome = exc
        self.busy = False
        if self.closing:
            return
        self._send(req.id, outcome)
        if not self.paused:
            self.transport.resume_reading()
        self._pump()

    def _send(self, rid: int, outcome) -> None:
        head, data = self.s._reply(rid, outcome)
        self.transport.write(head)
        if data:
            self.transport.write(data)
