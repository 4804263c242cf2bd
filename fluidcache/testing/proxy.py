"""A latency-injecting TCP proxy on loopback, in front of an HTTP endpoint (moto's S3).

Every response's first byte is held back `delay` seconds after the request that asked
for it (a first-byte latency, as from an in-region object store; default 20 ms); the
rest streams through. Any client goes through it alike, so no system is favoured.
With `strip` it also removes request headers (e.g. `If-Match`): moto behind it is a
store that ignores conditional reads, as several S3-compatible stores and proxies do.
With `hang_ranges` it never answers a request that asks for a byte range (listings and
HEADs still answer): a store that hangs on reads. With `rate` each connection's
responses stream at most `rate` bytes/s: with a first-byte latency, a model of a real
object store (S3 gives one connection ~50-100 MB/s after tens of ms; more bandwidth
comes only from more connections).
With `replay` it keeps each answer to a GET or HEAD (by method, target, range and
conditional headers; bounded) and answers the same request again from memory, still
after the delay; any other request (a write) is passed on and forgets every kept
answer; a client's connection is kept open (moto closes each after one request, a real
store does not). A model of a store whose servers are not on this machine: a local S3 stand-in
costs several ms of this machine's CPU per object (moto, s3rver: ~100-130 objects/s
however many are asked at once), where a real store's GETs scale with connections.
Runs as its own process (`python -m fluidcache.testing.proxy`), so it never shares a
GIL with what it measures. Binds 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

from .s3 import Endpoint, free_port


async def _pipe(reader, writer, on_chunk=None) -> None:
    """Copy `reader` to `writer` until either end closes; `on_chunk()` runs before each
    chunk is passed on."""
    try:
        while data := await reader.read(256 * 1024):
            if on_chunk is not None:
                await on_chunk(len(data))
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


_MAX_HEAD = 64 * 1024


async def _requests(reader, writer, strip: set[bytes], on_request,
                    hang_ranges: bool = False) -> None:
    """Copy HTTP/1.1 requests from `reader` to `writer`, without the headers named in
    `strip` (lowercase); bodies (Content-Length or chunked) pass through as they are.
    With `hang_ranges`, a request for a byte range is held: nothing more is copied."""
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            if len(head) > _MAX_HEAD:
                return
            lines = head[:-4].split(b"\r\n")
            kept = [lines[0]] + [ln for ln in lines[1:]
                                 if ln.split(b":", 1)[0].strip().lower() not in strip]
            fields = {ln.split(b":", 1)[0].strip().lower(): ln.split(b":", 1)[1].strip()
                      for ln in lines[1:] if b":" in ln}
            if hang_ranges and b"range" in fields:
                await reader.read()            # held until the client gives up
                return
            await on_request()
            writer.write(b"\r\n".join(kept) + b"\r\n\r\n")
            if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    writer.write(size_line)
                    n = int(size_line.split(b";")[0], 16)
                    writer.write(await reader.readexactly(n + 2))
                    if n == 0:
                        break
            else:
                left = int(fields.get(b"content-length", b"0"))
                while left:
                    chunk = await reader.read(min(left, 256 * 1024))
                    if not chunk:
                        return
                    writer.write(chunk)
                    left -= len(chunk)
            await writer.drain()
    except (ConnectionError, OSError, ValueError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


_KEYED = (b"range", b"if-match", b"if-none-match", b"if-modified-since",
          b"if-unmodified-since", b"accept-encoding", b"x-amz-checksum-mode",
          b"x-amz-server-side-encryption-customer-key-md5")
_KEEP_MAX = 64 << 20          # a larger body is never read whole (refused in replay)


class Replay:
    """Answers kept by request, at most `limit` bytes in all (then nothing more kept,
    `refused` counts what was not). `gen` moves at every write, before it is passed on
    and once it is answered: an answer asked for in another generation is not kept."""

    def __init__(self, limit: int = 2 << 30) -> None:
        self.kept: dict[tuple, bytes] = {}
        self.size, self.limit, self.gen, self.refused = 0, limit, 0, 0

    def keep(self, key: tuple, answer: bytes, gen: int) -> None:
        if gen != self.gen or key in self.kept:
            return
        if self.size + len(answer) > self.limit:
            self.refused += 1
            return
        self.kept[key] = answer
        self.size += len(answer)

    def forget(self) -> None:
        self.kept.clear()
        self.size = 0
        self.gen += 1


def _who(fields: dict[bytes, bytes]) -> bytes:
    """The access key a request is signed with (SigV4's Credential=KEY/...), or b""."""
    auth = fields.get(b"authorization", b"")
    _, _, cred = auth.partition(b"Credential=")
    return cred.partition(b"/")[0]


def _head_fields(head: bytes) -> tuple[list[bytes], dict[bytes, bytes]]:
    lines = head[:-4].split(b"\r\n")
    return lines, {ln.split(b":", 1)[0].strip().lower(): ln.split(b":", 1)[1].strip()
                   for ln in lines[1:] if b":" in ln}


async def _body(reader, fields: dict[bytes, bytes], to_eof: bool = False) -> bytes:
    """A message's body as sent (Content-Length or chunked; with `to_eof` and neither,
    up to the connection's end), at most _KEEP_MAX."""
    if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        out = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            n = int(size_line.split(b";")[0], 16)
            if len(out) + n > _KEEP_MAX:
                raise ValueError("body too large to replay")
            out += size_line + await reader.readexactly(n + 2)
            if n == 0:
                return bytes(out)
    if to_eof and b"content-length" not in fields:
        out = await reader.read(_KEEP_MAX + 1)
        while len(out) <= _KEEP_MAX and (more := await reader.read(_KEEP_MAX + 1 - len(out))):
            out += more
        if len(out) > _KEEP_MAX:
            raise ValueError("body too large to replay")
        return out
    n = int(fields.get(b"content-length", b"0"))
    if n > _KEEP_MAX:
        raise ValueError("body too large to replay")
    return await reader.readexactly(n)


async def _replaying(c_reader, c_writer, target, delay: float, rate: float,
                     replay: Replay) -> None:
    """Serve one client connection from `replay`, asking the store what it lacks."""
    upstream = None
    try:
        while True:
            try:
                head = await c_reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            asked = time.monotonic()
            lines, fields = _head_fields(head)
            method, _, rest = lines[0].partition(b" ")
            if fields.get(b"expect", b"").lower() == b"100-continue":
                c_writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")   # answered here
                head = b"\r\n".join(ln for ln in lines if not ln.lower().startswith(
                    b"expect:")) + b"\r\n\r\n"
            body = await _body(c_reader, fields)
            key = (method, rest.rpartition(b" ")[0], _who(fields)) + tuple(
                fields.get(h) for h in _KEYED)
            answer = replay.kept.get(key) if method in (b"GET", b"HEAD") else None
            gen = replay.gen
            if answer is None:
                if method not in (b"GET", b"HEAD"):
                    replay.forget()            # a write: what was kept may be stale
                if upstream is None:
                    upstream = await asyncio.open_connection(*target)
                upstream[1].write(head + body)
                await upstream[1].drain()
                r_head = await upstream[0].readuntil(b"\r\n\r\n")
                r_lines, r_fields = _head_fields(r_head)
                status = int(r_lines[0].split()[1])
                framed = b"content-length" in r_fields or \
                    r_fields.get(b"transfer-encoding", b"").lower() == b"chunked"
                r_body = b"" if method == b"HEAD" or status in (204, 304) \
                    else await _body(upstream[0], r_fields, to_eof=True)
                if not framed or \
                        r_fields.get(b"connection", b"").lower() == b"close":
                    upstream[1].close()          # moto's way: a connection a request
                    upstream = None
                # the model keeps its clients' connections, as a real store does (a body
                # the store ended by closing is sent with its length)
                r_lines = [ln for ln in r_lines if not ln.lower().startswith(b"connection:")]
                if not framed and method != b"HEAD" and status not in (204, 304):
                    r_lines.append(b"Content-Length: %d" % len(r_body))
                answer = b"\r\n".join(r_lines) + b"\r\n\r\n" + r_body
                if method in (b"GET", b"HEAD") and status in (200, 206) and framed:
                    replay.keep(key, answer, gen)
                elif method not in (b"GET", b"HEAD"):
                    replay.forget()            # and once it is answered
            ahead = asked + delay - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)     # the injected first-byte latency
            t0 = time.monotonic()
            for i in range(0, len(answer), 256 * 1024):
                c_writer.write(answer[i:i + 256 * 1024])
                await c_writer.drain()
                if rate:                       # the connection's rate cap
                    ahead = t0 + (i + 256 * 1024) / rate - time.monotonic()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
    except (ConnectionError, OSError, ValueError, IndexError, asyncio.LimitOverrunError,
            asyncio.IncompleteReadError):
        pass
    finally:
        c_writer.close()
        if upstream is not None:
            upstream[1].close()


_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>'
         b"<Error><Code>SlowDown</Code><Message>fault</Message></Error>")
_ERROR = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
          b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_BODY)) + _BODY


async def _serve(port: int, target: tuple[str, int], delay: float, fail: bool = False,
                 strip: tuple[str, ...] = (), hang_ranges: bool = False,
                 rate: float = 0.0, replay: bool = False) -> None:
    dropped = {h.lower().encode() for h in strip}
    kept = Replay() if replay else None

    async def handle(c_reader, c_writer):
        if kept is not None:
            await _replaying(c_reader, c_writer, target, delay, rate, kept)
            return
        if fail:             # the store answers every request with a 503 (a fault test)
            try:
                await c_reader.read(65536)
                c_writer.write(_ERROR)
                await c_writer.drain()
            except (ConnectionError, OSError):
                pass
            c_writer.close()
            return
        try:
            s_reader, s_writer = await asyncio.open_connection(*target)
        except OSError:
            c_writer.close()
            return
        asked = asyncio.Event()          # a request went up since the last response byte

        async def request_went_up(n: int = 0):
            asked.set()

        paced = {"t0": 0.0, "sent": 0}

        async def first_byte_delay(n: int = 0):
            if asked.is_set():
                asked.clear()
                await asyncio.sleep(delay)   # the injected first-byte latency
                paced["t0"], paced["sent"] = time.monotonic(), 0
            if rate and n:                   # the connection's rate cap
                paced["sent"] += n
                ahead = paced["t0"] + paced["sent"] / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)

        upstream = _requests(c_reader, s_writer, dropped, request_went_up, hang_ranges) \
            if dropped or hang_ranges else _pipe(c_reader, s_writer, request_went_up)
        await asyncio.gather(upstream, _pipe(s_reader, c_writer, first_byte_delay))

    server = await asyncio.start_server(handle, "127.0.0.1", port, limit=_MAX_HEAD)
    async with server:
        await server.serve_forever()


class LatencyProxy(Endpoint):
    """`with LatencyProxy(moto.endpoint, 0.02) as p: p.endpoint` (a subprocess)."""

    def __init__(self, target: str, delay: float = 0.02, port: int | None = None,
                 fail: bool = False, strip: tuple[str, ...] = (),
                 hang_ranges: bool = False, rate: float = 0.0,
                 replay: bool = False) -> None:
        """`fail`: answer every request with HTTP 503 instead (the store erring);
        `strip`: request headers to remove (e.g. ("If-Match",)); `rate`: bytes/s each
        connection's responses stream at, at most (0: no cap); `replay`: answer a GET
        or HEAD asked before from memory (a store whose CPU is elsewhere)."""
        host_port = target.split("://", 1)[-1].rstrip("/")
        self.target, self.delay, self.fail = host_port, delay, fail
        self.strip, self.hang_ranges, self.rate = tuple(strip), hang_ranges, rate
        self.replay = replay
        if replay and (fail or strip or hang_ranges):
            raise ValueError("replay takes only a delay and a rate")
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "LatencyProxy":
        self.proc = subprocess.Popen([sys.executable, "-m", "fluidcache.testing.proxy",
                                      "--port", str(self.port), "--target", self.target,
                                      "--delay", str(self.delay)]
                                     + (["--fail"] if self.fail else [])
                                     + [f"--strip={h}" for h in self.strip]
                                     + (["--hang-ranges"] if self.hang_ranges else [])
                                     + ([f"--rate={self.rate}"] if self.rate else [])
                                     + (["--replay"] if self.replay else []),
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)     # polling until the proxy listens (a condition)
        self.__exit__()
        raise RuntimeError("the latency proxy did not start")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--target", required=True, help="host:port")
    p.add_argument("--delay", type=float, default=0.02, help="seconds (default 0.02)")
    p.add_argument("--fail", action="store_true", help="answer every request with a 503")
    p.add_argument("--strip", action="append", default=[], metavar="HEADER",
                   help="remove this request header (repeatable), e.g. If-Match")
    p.add_argument("--hang-ranges", action="store_true",
                   help="never answer a request for a byte range")
    p.add_argument("--rate", type=float, default=0.0,
                   help="bytes/s each connection's responses stream at, at most")
    p.add_argument("--replay", action="store_true",
                   help="answer a GET or HEAD asked before from memory")
    a = p.parse_args(argv)
    host, _, port = a.target.rpartition(":")
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    try:
        asyncio.run(_serve(a.port, (host, int(port)), a.delay, a.fail, tuple(a.strip),
                           a.hang_ranges, a.rate, a.replay))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
