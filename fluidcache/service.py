"""A msgpack/TCP server on uvloop, run in a thread of its own (inside a Ray actor).

Owns: accepting connections, reading frames within the limits, dispatching each request
to a handler (a synchronous fast path, else an async one), writing replies, and turning
any failure into an error reply. A malformed frame gets a `protocol` error reply and the
connection is closed; a request refused for its token gets its error and the connection
is closed; the server keeps serving everyone else.
No peer can hold the server's slots: a new connection must send a whole frame within
`first_frame_timeout`; a frame, once begun, must be whole within `frame_timeout` (plus
its payload at `min_rate`), however slowly bytes trickle in; a connection silent between
frames for `idle_timeout` is closed; and when every slot is taken, the connection idle
the longest gives its slot to the new one.
Never: hold state of its own beyond connections; the handler owns the logic.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple

import uvloop

from . import wire
from .errors import AccessDenied, FluidError, ProtocolError, Unavailable

log = logging.getLogger(__name__)
_TRICKLING = 0.25    # a frame begun this long ago and not whole is slow, not in flight
_PIPELINE = 256      # requests one connection may send ahead of their replies



class Region(NamedTuple):
    """A reply payload that is a region of an open file: sent with `os.sendfile` (the
    bytes never enter Python) when the connection's send buffer is empty, else read and
    written. The server closes `fd` once sent."""

    fd: int
    offset: int
    length: int


# handler(request, payload) -> (result, payload: bytes, a Region, a list of both, or None)
Handler = Callable[[wire.Request, bytes], Awaitable[tuple[object, object]]]
# fast(request, payload) -> (result, payload) when it can answer without waiting, else None
FastHandler = Callable[[wire.Request, bytes], "tuple[object, object] | None"]


def bind_host(host: str) -> str:
    """`auto` binds to this Ray node's address (cluster mode); anything else as given."""
    if host == "auto":
        import ray
        return ray.util.get_node_ip_address()
    return host


def advertised(host: str) -> str:
    """The address peers should dial for a server bound to `host`: a wildcard bind
    (0.0.0.0, ::) is advertised as this node's address, never as itself."""
    if host not in ("0.0.0.0", "::", ""):
        return host
    import sys
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ray.util.get_node_ip_address()
    import socket
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


@dataclass(frozen=True)
class Limits:
    """What one server lets a peer hold (config.Config fills it)."""

    max_connections: int = 1024
    idle_timeout: float = 300.0         # silent between frames: closed (clients reconnect)
    first_frame_timeout: float = 10.0   # a new connection's first whole frame, at most
    frame_timeout: float = 10.0         # a begun frame's header, at most
    min_rate: float = 1024 * 1024       # bytes/s a payload must at least arrive at
    request_timeout: float = 60.0       # a request's handler, at most (then: Unavailable)


def limits_of(config) -> Limits:
    """A server's limits from the cluster's config."""
    return Limits(config.max_connections, config.idle_timeout, config.first_frame_timeout,
                  config.frame_timeout, request_timeout=config.request_timeout)


class Server:
    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0,
                 max_frame: int = wire.DEFAULT_MAX_FRAME, max_data: int = 0,
                 name: str = "fluidcache-server", fast: FastHandler | None = None,
                 limits: Limits = Limits(), sock: socket.socket | None = None,
                 **overrides) -> None:
        """`max_data`: the largest payload a *request* may carry (0: none; a worker's
        data server takes a write's chunk); `limits` (or keyword overrides of its
        fields): see the module header;
        `sock`: a listening socket to serve on instead of binding `host`:`port` (one
        another process made and shares: the kernel hands each connection to one of
        the processes accepting on it)."""
        self.handler, self.fast, self.host, self.port = handler, fast, host, port
        self.sock = sock
        self.max_frame, self.max_data = max_frame, max_data
        self.limits = Limits(**{**limits.__dict__, **overrides})
        self.idle_timeout = self.limits.idle_timeout
        self._conns: collections.OrderedDict = collections.OrderedDict()   # by last use
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.protocol_errors = 0
        self.timeouts = 0                 # connections closed for a frame too slow or late
        self.evicted = 0                  # idle connections closed to make room

    @property
    def connections(self) -> int:
        return len(self._conns)

    def start(self, timeout: float = 30.0) -> "Server":
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("server did not start in time")
        if self._error is not None:
            raise self._error
        return self

    @property
    def address(self) -> str:
        shown = advertised(self.host)
        host = f"[{shown}]" if ":" in shown else shown
        return f"{host}:{self.port}"

    def _run(self) -> None:
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self._server = self.loop.run_until_complete(
                self.loop.create_server(self._protocol, sock=self.sock)
                if self.sock is not None else
                self.loop.create_server(self._protocol, self.host, self.port))
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # noqa: BLE001 - whatever it is, start() reports it
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
            head = wire.pack(wire.Reply(rid, True, result, data_len=_length(data)).header())
        except (TypeError, ValueError) as exc:   # result not serializable
            _close_regions(data)
            return wire.pack(wire.Reply.failure(rid, exc).header()), None
        return head, data


def _length(data) -> int:
    if not data:
        return 0
    if isinstance(data, Region):
        return data.length
    if isinstance(data, list):
        return sum(_length(d) for d in data)
    return len(data)


def _close_regions(data) -> None:
    for part in (data if isinstance(data, list) else [data]):
        if isinstance(part, Region):
            os.close(part.fd)


def _closes(outcome) -> bool:
    """Replies after which the connection is closed: a wrong token (no guessing on one
    connection), a malformed or oversized message, or an error that says so."""
    return isinstance(outcome, (AccessDenied, ProtocolError)) or \
        getattr(outcome, "close_after", False)


class _Connection(asyncio.Protocol):
    """One client connection: frames decoded as bytes arrive (sans-I/O decoder), handled
    one at a time in order. A handler's `fast` path (no awaiting: a block in the memory
    tier) replies inside the same callback; the rest run as a task. Reading pauses while
    the peer does not take our replies (flow control) and while a request is handled."""

    def __init__(self, server: Server) -> None:
        self.s = server
        self.dec = wire.FrameDecoder(server.max_frame, server.max_data)
        self.pending: collections.deque = collections.deque()
        self.out: collections.deque = collections.deque()   # the reply's parts not sent yet
        self.transport: asyncio.Transport | None = None
        self.busy = self.paused = self.closing = self.counted = self.spoke = False
        self.last = 0.0
        self.timer: asyncio.TimerHandle | None = None      # idle / first-frame deadline
        self.frame_timer: asyncio.TimerHandle | None = None
        self.write_timer: asyncio.TimerHandle | None = None
        self.frame_started = self.paused_at = self.busy_since = 0.0

    def connection_made(self, transport) -> None:
        self.transport = transport
        conns, limits = self.s._conns, self.s.limits
        if len(conns) >= limits.max_connections and not self._evict_idle():
            self.closing = True
            transport.close()
            return
        self.counted = True
        conns[self] = None
        self.last = self.s.loop.time()
        self.timer = self.s.loop.call_later(limits.first_frame_timeout, self._check_idle)

    def _evict_idle(self) -> bool:
        """Every slot taken: make room for the new peer. The victim is, in this order:
        the connection idle the longest (between frames, owed nothing); the one whose
        frame has been trickling in the longest (a peer that sends a frame at network
        speed is done in milliseconds); the one that has not taken its replies for the
        longest; the one whose request has run the longest. False when none qualifies."""
        now, idle, trickling, paused, busy = self.s.loop.time(), None, None, None, None
        for conn in self.s._conns:
            if conn.closing:
                continue
            if conn.paused:
                if now - conn.paused_at > _TRICKLING and (
                        paused is None or conn.paused_at < paused.paused_at):
                    paused = conn
            elif conn.busy:
                if now - conn.busy_since > self.s.limits.frame_timeout and (
                        busy is None or conn.busy_since < busy.busy_since):
                    busy = conn
            elif conn.pending:
                continue
            elif not conn.dec.partial:
                idle = idle or conn                   # the first is the longest idle
            elif now - conn.frame_started > _TRICKLING and (
                    trickling is None or conn.frame_started < trickling.frame_started):
                trickling = conn
        victim = idle or trickling or paused or busy
        if victim is None:
            return False
        victim._drop()
        self.s.evicted += 1
        return True

    def _release(self) -> None:
        if self.out:                  # the parts of a reply never sent: their files close
            _close_regions(list(self.out))
            self.out.clear()
        if self.counted:
            self.counted = False
            self.s._conns.pop(self, None)

    def connection_lost(self, exc) -> None:
        self.closing = True
        for t in (self.timer, self.frame_timer, self.write_timer):
            if t is not None:
                t.cancel()
        self._release()

    def _check_idle(self) -> None:
        """Close a connection that never sent a whole frame within first_frame_timeout,
        or that was silent between frames for idle_timeout."""
        limit = self.s.limits.idle_timeout if self.spoke else \
            self.s.limits.first_frame_timeout
        idle = self.s.loop.time() - self.last
        if self.busy or self.dec.partial:
            idle = 0.0              # we owe it a reply, or the frame deadline watches it
        if idle >= limit:
            if not self.spoke:
                self.s.timeouts += 1
            self._drop()
        else:
            self.timer = self.s.loop.call_later(limit - idle, self._check_idle)

    def _frame_deadline(self) -> None:
        """Watch a begun frame: it must be whole by its deadline, however slowly its
        bytes trickle in (a slowloris peer holds nothing for long)."""
        if not self.dec.partial:
            if self.frame_timer is not None:
                self.frame_timer.cancel()
                self.frame_timer = None
            return
        now = self.s.loop.time()
        if self.frame_timer is None:
            self.frame_started = now
        limits = self.s.limits
        due = self.frame_started + limits.frame_timeout + self.dec.awaiting / limits.min_rate
        if self.frame_timer is not None:
            self.frame_timer.cancel()
        self.frame_timer = self.s.loop.call_at(due, self._frame_late)

    def _frame_late(self) -> None:
        if self.dec.partial and not self.closing:
            self.s.timeouts += 1
            self._drop()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last = self.s.loop.time()
        self.s._conns.move_to_end(self, last=True)
        try:
            self.dec.feed(data)
            while (frame := self.dec.next_frame()) is not None:
                self.pending.append(frame)
                self.spoke = True
                if len(self.pending) > _PIPELINE:
                    raise ProtocolError(f"more than {_PIPELINE} requests sent ahead of "
                                        "their replies")
        except ProtocolError as exc:
            self._fatal(0, exc)
            return
        self._frame_deadline()
        self._pump()

    def eof_received(self) -> bool:
        return False                             # close our side too

    def pause_writing(self) -> None:
        """The peer does not take our replies. It has `frame_timeout` to start again;
        a peer that asks and never reads would otherwise hold its slot for ever."""
        self.paused = True
        self.paused_at = self.s.loop.time()
        self.transport.pause_reading()
        self.write_timer = self.s.loop.call_later(self.s.limits.frame_timeout,
                                                  self._write_late)

    def resume_writing(self) -> None:
        self.paused = False
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None
        self._flush()
        if not (self.busy or self.closing):
            self.transport.resume_reading()
        self._pump()

    def _write_late(self) -> None:
        if self.paused and not self.closing:
            self.s.timeouts += 1
            self._drop()

    def _drop(self) -> None:
        """Close at once, unsent replies and all: the slot is free now."""
        self.closing = True
        self.pending.clear()
        self.transport.abort()
        self._release()

    def _fatal(self, rid: int, exc: ProtocolError) -> None:
        self.s.protocol_errors += 1
        self.transport.write(self.s._reply(rid, exc)[0])
        self.closing = True
        self.pending.clear()
        self.transport.close()

    def _pump(self) -> None:
        while self.pending and not (self.busy or self.paused or self.closing or self.out):
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
        self.busy_since = self.s.loop.time()
        try:
            outcome = await asyncio.wait_for(self.s.handler(req, payload),
                                             self.s.limits.request_timeout)
        except asyncio.TimeoutError:
            outcome = Unavailable(f"{req.op} took longer than "
                                  f"{self.s.limits.request_timeout:g}s; try again")
        except FluidError as exc:
            outcome = exc
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and getattr(task, "cancelling", lambda: 0)():
                raise                 # asked of this task (3.11+ tells; 3.10: answered)
            # a handler that awaited something another cancelled: the peer still hears
            log.warning("%s was cancelled inside its handler", req.op)
            outcome = Unavailable(f"{req.op} was cancelled; try again")
        except Exception as exc:  # a bug: reply, log, keep serving
            log.exception("handler failed on %s", req.op)
            outcome = exc
        self.busy = False
        if self.closing:
            return
        self._send(req.id, outcome)
        if not (self.paused or self.closing):
            self.transport.resume_reading()
        self._pump()

    def _send(self, rid: int, outcome) -> None:
        head, data = self.s._reply(rid, outcome)
        self.transport.write(head)
        if data:
            self.out.extend(data if isinstance(data, list) else [data])
            self._flush()
        if _closes(outcome) and not self.closing:
            # the answer, then the door
            self.closing = True
            self.pending.clear()
            self.transport.close()

    def _flush(self) -> None:
        """Send the reply's parts while the peer takes them. When it stops (our buffer
        above its high mark: pause_writing), the rest wait, file regions as open files:
        a batch is never read whole into memory, at most one part beyond the socket's
        buffers (resume_writing goes on; no next request is handled meanwhile)."""
        while self.out and not (self.paused or self.closing):
            part = self.out.popleft()
            if isinstance(part, Region):
                try:
                    self._send_region(part)
                finally:
                    os.close(part.fd)
            else:
                self.transport.write(part)
        if self.closing:
            self._release()

    def _send_region(self, r: Region) -> None:
        """A file region: `sendfile` straight from the page cache while nothing of ours
        waits in the transport's buffer (then the socket is ours to write); the rest, if
        the socket's buffer fills, read and queued. A region that comes back short (a
        file truncated under us) aborts the connection: its frame cannot be finished."""
        off, left = r.offset, r.length
        if self.transport.get_write_buffer_size() == 0 and not self.closing:
            sock = self.transport.get_extra_info("socket")
            try:
                while left:
                    n = os.sendfile(sock.fileno(), r.fd, off, left)
                    if n == 0:
                        break
                    off, left = off + n, left - n
            except BlockingIOError:
                pass
            except OSError:
                self._drop()                 # the peer is gone
                return
        if left and not self.closing:
            rest = os.pread(r.fd, left, off)
            if len(rest) != left:
                log.warning("a served file region came back short; closing the connection")
                self._drop()
                return
            self.transport.write(rest)
