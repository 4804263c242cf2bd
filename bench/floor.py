"""The floor of a request per file: bare server processes that answer a file's name with
its size and its bytes (`sendfile`), and the client loop that asks them.

No framing beyond two length prefixes, no checksums, tokens, limits or accounting: what
a per-file request/response costs on this machine in Python with nothing else done,
so `bench.remote` can show how far its data path is from it. Loopback only; names are
looked up under the served directory and nothing else (a bench fixture, not a server).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import socket
import struct
import threading

_NAME, _SIZE = struct.Struct(">H"), struct.Struct(">Q")


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        k = sock.recv_into(view[got:])
        if not k:
            raise ConnectionError("closed mid-reply")
        got += k


def _serve_one(conn: socket.socket, root: str) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = bytearray(_NAME.size)
    with conn:
        while True:
            try:
                _recv_exact(conn, memoryview(head))
            except ConnectionError:
                return
            name = bytearray(_NAME.unpack(head)[0])
            _recv_exact(conn, memoryview(name))
            path = os.path.realpath(os.path.join(root, name.decode()))
            if not path.startswith(root + os.sep):
                return
            fd = os.open(path, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                conn.sendall(_SIZE.pack(size))
                off = 0
                while off < size:
                    off += os.sendfile(conn.fileno(), fd, off, size - off)
            finally:
                os.close(fd)


def _serve(sock: socket.socket, root: str) -> None:
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=_serve_one, args=(conn, root), daemon=True).start()


class FloorServers:
    """`n` processes accepting on one loopback port (SO_REUSEPORT), serving `root`."""

    def __init__(self, root: str, n: int = 2) -> None:
        self.root = os.path.realpath(root)
        ctx = mp.get_context("fork")
        self.procs, self.port = [], 0
        for _ in range(n):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", self.port))
            sock.listen(64)
            self.port = sock.getsockname()[1]
            p = ctx.Process(target=_serve, args=(sock, self.root), daemon=True)
            p.start()
            sock.close()
            self.procs.append(p)
        self.pids = [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
            p.join(5)


class FloorClient:
    """One connection, one request per file, the reply received into a bytearray."""

    def __init__(self, port: int) -> None:
        self.port, self.sock = port, None

    def get(self, name: str) -> bytearray:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw = name.encode()
        self.sock.sendall(_NAME.pack(len(raw)) + raw)
        head = bytearray(_SIZE.size)
        _recv_exact(self.sock, memoryview(head))
        out = bytearray(_SIZE.unpack(head)[0])
        _recv_exact(self.sock, memoryview(out))
        return out
