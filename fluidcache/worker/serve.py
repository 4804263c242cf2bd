"""A serving process: one of several per node that answer reads of cached blocks.

The worker actor's own server is one Python thread; these processes each accept on a
listening socket the worker made and holds for its life (all on one port with
SO_REUSEPORT: the kernel spreads connections over them; inherited, so the port is never
free for another user's process while the worker lives) and answer `read` and `readv`
(a batch of reads) straight from the node's self-describing tier files, so serving
scales with cores. A whole block is sent with `sendfile` and its checksum travels in
the reply header: the client verifies it, the bytes never enter Python here. Everything
else (a block not cached, an op other than reads, a token not known here, a corrupt
file) is answered `not_here`: the client asks the worker itself, which fetches, fills,
refuses and counts as it always has.

A block is served only when its tier file's trailer names the file id and index asked
for and its owner is the asking namespace's dataset (`namespace/name`): a tenant gets
only blocks its own namespace filled (file ids are bound to the namespace too).

Started by the worker (servers.py) as `python -m fluidcache.worker.serve`. Its first line
on stdin is its settings (JSON; `fd`: the listening socket's descriptor); later lines
carry the worker's token table and map version. It writes {"port": N} once listening,
then a report every `report_every` seconds: hits and bytes per dataset, the keys served
(for the worker's eviction order), and its server's protocol errors, timeouts and
evictions (none while its loop is stuck: the worker kills a process that stays silent).
It ends when stdin closes (the worker stopped or died).
Owns: answering reads from tier files. Never: fetch, write or remove a block.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hmac
import json
import os
import resource
import socket
import sys
import threading

from .. import blocks
from ..errors import InvalidRequest, NotHere, ProtocolError, to_wire
from ..service import Limits, Region, Server
from ..tiering import layout
from ..understore.versions import is_weak
from ..wire import BlockRead

READV_MAX = 64            # reads in one batch (the client splits larger ones)
KEYS_MAX = 65536          # served keys kept for one report (advisory: oldest dropped)
_REPORT_KEYS = 4096       # keys in one report line


def _door(exc: NotHere) -> NotHere:
    """A `not_here` after which the connection is closed (a token we do not know: the
    client asks the worker, which decides; no guessing tokens on one connection)."""
    exc.close_after = True
    return exc


class Served:
    """The reads a serving process answers, and what it counts for its worker."""

    def __init__(self, tier_paths: list[str], block_size: int, max_data: int,
                 node_id: str = "") -> None:
        self.tier_paths, self.block_size, self.max_data = tier_paths, block_size, max_data
        self.node_id = node_id
        self.tokens: dict[str, str] = {}
        self.map_version = 0
        self.hits: dict[str, list[int]] = {}          # "ns/name" -> [hits, bytes]
        self.keys: collections.deque = collections.deque(maxlen=KEYS_MAX)
        self.stalls = 0           # reports skipped because the loop was stuck

    def fast(self, req, payload):
        if req.op == "ping":
            return {"pong": True, "id": self.node_id, "serve": True}, None
        if req.op not in ("read", "readv"):
            raise NotHere(f"{req.op}: ask the worker")
        ns = req.namespace or ""
        expected = self.tokens.get(ns)
        if expected is None or not hmac.compare_digest((req.token or "").encode(),
                                                        expected.encode()):
            raise _door(NotHere("token not known here; ask the worker"))
        if req.op == "read":
            got = self._one(ns, BlockRead.from_args(req.args))
            if got is None:
                raise NotHere("not held here; ask the worker")
            return got
        return self._many(ns, req.args)

    async def slow(self, req, payload):
        raise NotHere(f"{req.op}: ask the worker")

    def _many(self, ns: str, args: dict):
        """A batch: {"items": [result | {"miss": 1} | {"e": error}], "mv"}, the payloads
        of the items served in their order. Bounded in count and bytes (else the
        connection is closed after the error)."""
        items = args.get("r")
        if not isinstance(items, list) or not items:
            raise InvalidRequest("readv needs a non-empty list 'r' of reads")
        if len(items) > READV_MAX:
            raise ProtocolError(f"a batch of {len(items)} reads; at most {READV_MAX}")
        reads = []
        for a in items:
            if not isinstance(a, dict):
                raise ProtocolError("readv: every read must be a map")
            reads.append(BlockRead.from_args(a))
        bs = self.block_size
        if sum(blocks.reply_length(r.size, bs, r.index, r.offset, r.length)
               for r in reads) > self.max_data:
            raise ProtocolError(f"a batch of more than {self.max_data} bytes")
        results, parts = [], []
        try:
            for r in reads:
                try:
                    got = self._one(ns, r)
                except InvalidRequest as exc:
                    results.append({"e": to_wire(exc)})
                    continue
                if got is None:
                    results.append({"miss": 1})
                else:
                    results.append(got[0])
                    parts.append(got[1])
        except BaseException:
            for part in parts:                 # the files opened for the items before
                if isinstance(part, Region):
                    os.close(part.fd)
            raise
        return {"items": results, "mv": self.map_version}, parts

    def _one(self, ns: str, r: BlockRead):
        """(result, payload) of one read from a tier file, or None when no tier here
        holds it whole and intact for this namespace's dataset."""
        bs = self.block_size
        if (r.block_size or bs) != bs or not r.fid or not r.size or is_weak(r.version):
            return None       # a weak version's scope is the worker's to check
        length, start, n = span(r, bs)
        key = blocks.block_key(r.fid, r.index, bs)
        owner = f"{ns}/{r.dataset}"
        for tier in self.tier_paths:
            try:
                found = layout.open_exact(tier, key, length, (r.fid, r.index))
            except (layout.CorruptBlock, OSError):
                return None                   # the worker reads it and drops it
            if found is None:
                continue
            fd, meta_bytes, digest = found
            if meta_bytes[:-24] != owner.encode():     # owner | u64 index | 16-byte file id
                os.close(fd)
                return None
            if n == length:                   # whole: sent as it lies, client verifies
                self._count(owner, key, n)
                return {"n": n, "x": digest, "mv": self.map_version}, Region(fd, 0, length)
            try:                              # a part: verified here, then sliced
                data = os.pread(fd, length, 0)
            except OSError:
                return None                   # the worker reads it (and drops it if bad)
            finally:
                os.close(fd)
            if len(data) != length or layout.checksum(key, data, meta_bytes) != digest:
                return None
            self._count(owner, key, n)
            return {"n": n, "mv": self.map_version}, data[start:start + n]
        return None

    def _count(self, owner: str, key: str, n: int) -> None:
        hit = self.hits.get(owner)
        if hit is None:
            hit = self.hits[owner] = [0, 0]
        hit[0] += 1
        hit[1] += n
        self.keys.append(key)

    def take(self) -> tuple[dict, list]:
        """What was counted since the last take (called on the server's loop)."""
        hits, self.hits = self.hits, {}
        keys = list(self.keys)
        self.keys.clear()
        return hits, keys


def span(r: BlockRead, bs: int) -> tuple[int, int, int]:
    """(the block's length, where the read starts in it, how many bytes it reads);
    InvalidRequest for a read outside the file or the block."""
    try:
        length = blocks.block_length(r.size, bs, r.index)
    except ValueError:
        raise InvalidRequest(f"block {r.index} is past the end of a {r.size}-byte "
                             "file") from None
    if r.offset > length:
        raise InvalidRequest(f"offset {r.offset} is past the end of block {r.index}")
    end = length if r.length < 0 else min(length, r.offset + r.length)
    return length, r.offset, end - r.offset


def _report_loop(served: Served, server: Server, every: float, stop: threading.Event,
                 out, stuck_after: float = 10.0) -> None:
    async def take():
        return served.take()

    asked = None          # a take not answered yet: waited on again, never asked twice
    while not stop.wait(every):
        if server.loop is None or server.loop.is_closed():
            return                             # we are stopping
        try:
            if asked is None:
                asked = asyncio.run_coroutine_threadsafe(take(), server.loop)
            hits, keys = asked.result(stuck_after)
        except concurrent.futures.TimeoutError:
            served.stalls += 1
            continue     # the loop is stuck (a stalled disk): no report; the worker sees
        except Exception:  # noqa: BLE001 - the loop is gone: we are stopping
            return
        asked = None
        counts = {"pe": server.protocol_errors, "to": server.timeouts, "ev": server.evicted,
                  "st": served.stalls}
        lines = [{"hits": hits if not i else {}, "keys": keys[i:i + _REPORT_KEYS], **counts}
                 for i in range(0, max(1, len(keys)), _REPORT_KEYS)]
        try:
            for line in lines:
                out.write(json.dumps(line) + "\n")
            out.flush()
        except (OSError, ValueError):
            return


def main() -> int:
    settings = json.loads(sys.stdin.readline())
    served = Served(settings["tier_paths"], settings["block_size"], settings["max_data"],
                    settings.get("node_id", ""))
    served.tokens = settings.get("tokens", {})
    out = sys.stdout
    sys.stdout = sys.stderr                  # nothing else may write to the report pipe
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:          # a batch's regions are open files until sent (else: not_here)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # our slot's listening socket, inherited: the port is the worker's for its life
    listening = socket.socket(fileno=settings["fd"])
    server = Server(served.slow, max_frame=settings["max_frame"], name="fluidcache-serve",
                    fast=served.fast, limits=Limits(**settings["limits"]),
                    sock=listening).start()
    out.write(json.dumps({"port": server.port}) + "\n")
    out.flush()
    stop = threading.Event()
    reporter = threading.Thread(target=_report_loop, daemon=True, name="fluidcache-report",
                                args=(served, server, settings.get("report_every", 0.5),
                                      stop, out))
    reporter.start()
    for line in sys.stdin:                   # the worker's updates, until it goes
        try:
            update = json.loads(line)
        except ValueError:
            continue
        if isinstance(update.get("tokens"), dict):
            served.tokens = update["tokens"]
        if isinstance(update.get("mv"), int):
            served.map_version = update["mv"]
    stop.set()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
