"""A latency-injecting TCP proxy on loopback, in front of an HTTP endpoint (moto's S3).

Every response's first byte is held back `delay` seconds after the request that asked
for it (a first-byte latency, as from an in-region object store; default 20 ms); the
rest streams through. Any client goes through it alike, so no system is favoured.
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
                await on_chunk()
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>'
         b"<Error><Code>SlowDown</Code><Message>fault</Message></Error>")
_ERROR = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
          b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_BODY)) + _BODY


async def _serve(port: int, target: tuple[str, int], delay: float, fail: bool = False) -> None:
    async def handle(c_reader, c_writer):
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

        async def request_went_up():
            asked.set()

        async def first_byte_delay():
            if asked.is_set():
                asked.clear()
                await asyncio.sleep(delay)   # the injected first-byte latency

        await asyncio.gather(_pipe(c_reader, s_writer, request_went_up),
                             _pipe(s_reader, c_writer, first_byte_delay))

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


class LatencyProxy(Endpoint):
    """`with LatencyProxy(moto.endpoint, 0.02) as p: p.endpoint` (a subprocess)."""

    def __init__(self, target: str, delay: float = 0.02, port: int | None = None,
                 fail: bool = False) -> None:
        """`fail`: answer every request with HTTP 503 instead (the store erring)."""
        host_port = target.split("://", 1)[-1].rstrip("/")
        self.target, self.delay, self.fail = host_port, delay, fail
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "LatencyProxy":
        self.proc = subprocess.Popen([sys.executable, "-m", "fluidcache.testing.proxy",
                                      "--port", str(self.port), "--target", self.target,
                                      "--delay", str(self.delay)]
                                     + (["--fail"] if self.fail else []),
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
    a = p.parse_args(argv)
    host, _, port = a.target.rpartition(":")
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    try:
        asyncio.run(_serve(a.port, (host, int(port)), a.delay, a.fail))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
