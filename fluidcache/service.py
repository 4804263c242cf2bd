"""A msgpack/TCP server on uvloop, run in a thread of its own (inside a Ray actor).

Owns: accepting connections, reading frames within the limits, dispatching each request
to an async handler, writing replies, and turning any failure into an error reply. A
malformed frame gets a `protocol` error reply and the connection is closed; the server
keeps serving everyone else.
Never: hold state of its own beyond connections; the handler owns the logic.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable

import uvloop

from . import wire
from .errors import FluidError, ProtocolError

log = logging.getLogger(__name__)

# handler(request, payload) -> (result, payload bytes or None)
Handler = Callable[[wire.Request, bytes], Awaitable[tuple[object, object]]]


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
                 idle_timeout: float = 300.0) -> None:
        """`max_data`: the largest payload a *request* may carry (no op takes one today,
        so 0); `idle_timeout`: a connection silent for this long between or within
        frames is closed (clients reconnect), so idle peers cannot hold every slot."""
        self.handler, self.host, self.port = handler, host, port
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
                asyncio.start_server(self._serve, self.host, self.port, limit=2**20))
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

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._slots.acquire(blocking=False):
            writer.close()
            return
        self.connections += 1
        try:
            while True:
                try:
                    frame = await asyncio.wait_for(
                        wire.read_frame(reader, self.max_frame, self.max_data),
                        self.idle_timeout)
                except asyncio.TimeoutError:
                    return
                except ProtocolError as exc:
                    self.protocol_errors += 1
                    writer.write(wire.pack(wire.Reply.failure(0, exc).header()))
                    await writer.drain()
                    return
                if frame is None:
                    return
                header, payload = frame
                try:
                    req = wire.Request.from_header(header)
                except ProtocolError as exc:
                    self.protocol_errors += 1
                    writer.write(wire.pack(wire.Reply.failure(header.get("i", 0)
                                 if isinstance(header.get("i"), int) else 0, exc).header()))
                    await writer.drain()
                    return
                try:
                    result, data = await self.handler(req, payload)
                    reply = wire.Reply(req.id, True, result, data_len=len(data) if data else 0)
                except FluidError as exc:
                    reply, data = wire.Reply.failure(req.id, exc), None
                except Exception as exc:  # a bug: reply, log, keep serving
                    log.exception("handler failed on %s", req.op)
                    reply, data = wire.Reply.failure(req.id, exc), None
                try:
                    head = wire.pack(reply.header())
                except (TypeError, ValueError) as exc:  # result not serializable
                    reply, data = wire.Reply.failure(req.id, exc), None
                    head = wire.pack(reply.header())
                writer.write(head)
                if data:
                    writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self.connections -= 1
            self._slots.release()
            writer.close()
