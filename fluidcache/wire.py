"""Framing and messages shared by every peer (clients, master, workers).

A frame is a 4-byte big-endian length H, H bytes of a msgpack map (the header), then,
when the header says so (`"d": n`), n raw bytes of payload. Block data travels as raw
payload so it is never copied into or out of msgpack.

    request header: {"i": id, "op": str, "a": {args}, "ns": namespace, "tk": token}
    reply header:   {"i": id, "ok": true, "r": result, "d": n}   or
                    {"i": id, "ok": false, "e": {"code", "message"}}

Owns: the byte format, the message dataclasses, their validation, and the limits on what
a peer reads (`max_frame` for headers, `max_data` for payloads) so that no peer ever
allocates more than its configured limit for one frame.
Never: open sockets or choose addresses (callers pass streams or sockets in).
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .errors import InvalidRequest, ProtocolError, from_wire, to_wire

_LEN = struct.Struct(">I")
DEFAULT_MAX_FRAME = 1024**2
DEFAULT_MAX_DATA = 64 * 1024**2


@dataclass(frozen=True, slots=True)
class Request:
    op: str
    args: dict = field(default_factory=dict)
    id: int = 0
    namespace: str | None = None
    token: str | None = None

    def header(self) -> dict:
        h = {"i": self.id, "op": self.op, "a": self.args}
        if self.namespace is not None:
            h["ns"] = self.namespace
        if self.token is not None:
            h["tk"] = self.token
        return h

    @classmethod
    def from_header(cls, h: dict) -> "Request":
        op, args, rid = h.get("op"), h.get("a", {}), h.get("i", 0)
        ns, tk = h.get("ns"), h.get("tk")
        if not isinstance(op, str) or not isinstance(args, dict) or not isinstance(rid, int) \
                or isinstance(rid, bool):
            raise ProtocolError("request needs a string 'op', a map 'a' and an integer 'i'")
        if not (ns is None or isinstance(ns, str)) or not (tk is None or isinstance(tk, str)):
            raise ProtocolError("'ns' and 'tk' must be strings")
        return cls(op, args, rid, ns, tk)


@dataclass(frozen=True, slots=True)
class Reply:
    id: int
    ok: bool
    result: Any = None
    error: dict | None = None
    data_len: int = 0

    def header(self) -> dict:
        h: dict = {"i": self.id, "ok": self.ok}
        if self.ok:
            h["r"] = self.result
        else:
            h["e"] = self.error
        if self.data_len:
            h["d"] = self.data_len
        return h

    @classmethod
    def from_header(cls, h: dict) -> "Reply":
        ok, rid, n = h.get("ok"), h.get("i", 0), h.get("d", 0)
        if not isinstance(ok, bool) or any(not isinstance(v, int) or isinstance(v, bool)
                                           for v in (rid, n)) or n < 0:
            raise ProtocolError("reply needs a boolean 'ok' and integers 'i' and 'd' >= 0")
        return cls(rid, ok, h.get("r"), h.get("e"), n)

    @classmethod
    def failure(cls, rid: int, exc: BaseException) -> "Reply":
        return cls(rid, False, error=to_wire(exc))

    def unwrap(self) -> Any:
        """The result, or raise the error the reply carries."""
        if not self.ok:
            raise from_wire(self.error)
        return self.result


@dataclass(frozen=True, slots=True)
class BlockRead:
    """Args of the data server's `read` and `prefetch` ops: bytes [offset, offset+length)
    of one block of one version of a file. `fid` is the file id the caller listed (the
    worker checks it against its own mount table: a stale listing is refused, never
    served another file's bytes); `block_size` the block size the caller's cluster map
    says (0: the server's own; another one is refused)."""

    dataset: str
    path: str
    version: str
    size: int          # the file's size, as the caller listed it
    index: int         # block index in the file
    offset: int = 0    # within the block
    length: int = -1   # -1: to the end of the block
    fid: str = ""      # the file id as listed ("" : not given)
    block_size: int = 0

    def to_args(self) -> dict:
        args = {"ds": self.dataset, "p": self.path, "v": self.version, "s": self.size,
                "b": self.index, "o": self.offset, "l": self.length}
        if self.fid:
            args["f"] = self.fid
        if self.block_size:
            args["bs"] = self.block_size
        return args

    @classmethod
    def from_args(cls, a: dict) -> "BlockRead":
        try:
            r = cls(a["ds"], a["p"], a["v"], a["s"], a["b"], a.get("o", 0), a.get("l", -1),
                    a.get("f", ""), a.get("bs", 0))
        except (KeyError, TypeError):
            raise InvalidRequest("read needs ds, p, v, s, b") from None
        if not (isinstance(r.dataset, str) and isinstance(r.path, str)
                and isinstance(r.version, str)):
            raise InvalidRequest("read: ds, p and v must be strings")
        if not isinstance(r.fid, str) or len(r.fid) > _MAX_FID \
                or not all(c in _HEX for c in r.fid):
            raise InvalidRequest("read: f must be a file id (hex)")
        for name in ("size", "index", "offset", "length", "block_size"):
            v = getattr(r, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (-1 if name == "length" else 0):
                raise InvalidRequest(f"read: {name} must be a non-negative integer")
        return r


_HEX = frozenset("0123456789abcdef")
_MAX_FID = 64


# -- encoding -----------------------------------------------------------------------

def pack(header: dict) -> bytes:
    """Length prefix + msgpack header, ready to send (a payload, if any, follows)."""
    body = msgpack.packb(header, use_bin_type=True)
    return _LEN.pack(len(body)) + body


def unpack_header(body: bytes | memoryview) -> dict:
    """Decode a header body; anything that is not a single msgpack map is a ProtocolError."""
    try:
        h = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # noqa: BLE001 - msgpack raises several unrelated types
        raise ProtocolError(f"malformed frame: {type(exc).__name__}") from None
    if not isinstance(h, dict):
        raise ProtocolError("frame header must be a map")
    return h


def _check_len(n: int, limit: int, what: str) -> None:
    if n > limit:
        raise ProtocolError(f"{what} of {n} bytes exceeds the limit of {limit}")


def payload_len(h: dict, max_data: int) -> int:
    n = h.get("d", 0)
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ProtocolError("'d' must be a non-negative integer")
    _check_len(n, max_data, "payload")
    return n


class FrameDecoder:
    """A sans-I/O decoder: feed it bytes, take complete (header, payload) frames out.

    Enforces the limits before buffering: a length prefix over `max_frame` or a payload
    over `max_data` raises ProtocolError at once, without allocating for it.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, max_data: int = DEFAULT_MAX_DATA):
        self.max_frame, self.max_data = max_frame, max_data
        self._buf = bytearray()
        self._header: dict | None = None
        self._need = 0

    @property
    def partial(self) -> bool:
        """Is a frame begun but not complete?"""
        return bool(self._buf) or self._header is not None

    @property
    def awaiting(self) -> int:
        """Payload bytes the frame begun still needs (0 before its header is read)."""
        return max(0, self._need - len(self._buf)) if self._header is not None else 0

    def feed(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > self.max_frame + self.max_data + _LEN.size:
            raise ProtocolError("peer sent more than one frame's limit without a break")

    def next_frame(self) -> tuple[dict, bytes] | None:
        if self._header is None:
            if len(self._buf) < _LEN.size:
                return None
            (hlen,) = _LEN.unpack_from(self._buf)
            _check_len(hlen, self.max_frame, "frame header")
            if len(self._buf) < _LEN.size + hlen:
                return None
            header = unpack_header(bytes(self._buf[_LEN.size:_LEN.size + hlen]))
            need = payload_len(header, self.max_data)  # may raise: keep no half-taken frame
            del self._buf[:_LEN.size + hlen]
            self._header, self._need = header, need
        if len(self._buf) < self._need:
            return None
        with memoryview(self._buf) as view:       # one copy of the payload, not two
            payload = bytes(view[:self._need])
        header = self._header
        del self._buf[:self._need]
        self._header, self._need = None, 0
        return header, payload


# -- blocking sockets (clients) ---------------------------------------------------------

def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    _recv_into(sock, memoryview(buf))
    return buf


def send_request(sock: socket.socket, req: Request, payload: bytes = b"") -> None:
    h = req.header()
    if payload:
        h["d"] = len(payload)
    sock.sendall(pack(h) + payload if len(payload) < 65536 else pack(h))
    if len(payload) >= 65536:
        sock.sendall(payload)


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    got, n = 0, len(view)
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError("connection closed by peer mid-frame")
        got += k


def _recv_bytes(sock: socket.socket, n: int) -> bytes | bytearray:
    """`n` bytes: one bytes object when they arrive at once (no copy beyond the kernel's,
    and none for a caller that wants bytes), else assembled in a bytearray."""
    first = sock.recv(n)
    if len(first) == n:
        return first
    if not first:
        raise ConnectionError("connection closed by peer mid-frame")
    buf = bytearray(n)
    buf[:len(first)] = first
    _recv_into(sock, memoryview(buf)[len(first):])
    return buf


def recv_reply(sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME,
               max_data: int = DEFAULT_MAX_DATA, into: memoryview | None = None,
               split=None) -> tuple[Reply, bytes | bytearray | memoryview | list]:
    """One reply. A payload of exactly len(`into`) bytes is received straight into
    `into` (returned as the payload: no intermediate buffer). `split(result)` may name
    the lengths of the payload's parts (a batch's items): when they add up to it, each
    part is received as its own object and the payload is their list. Any other payload
    is received as one object."""
    (hlen,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    _check_len(hlen, max_frame, "frame header")
    header = unpack_header(_recv_exact(sock, hlen))
    n = payload_len(header, max_data)
    reply = Reply.from_header(header)
    if into is not None and n == len(into) and n:
        _recv_into(sock, into)
        return reply, into
    if split is not None and reply.ok:
        try:
            sizes = split(reply.result)
        except Exception:  # noqa: BLE001 - a result of another shape: one payload
            sizes = None
        if sizes is not None and sum(sizes) == n and all(k >= 0 for k in sizes):
            return reply, [_recv_bytes(sock, k) if k else b"" for k in sizes]
    return reply, (_recv_bytes(sock, n) if n else b"")
