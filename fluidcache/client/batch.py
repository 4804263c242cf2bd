"""Batch reads: many small ranges (the files of a training set, `cat` of many paths,
`cat_ranges`) read with one request per worker instead of one per range.

Ranges inside one block are grouped by the block's first owner (rendezvous order) and
sent as `readv` batches (at most READV_MAX reads and `max_data` bytes each, the groups
at once on the reader's threads): to the owner's serving processes first, then what they
do not hold to the worker itself. A whole block comes with its tier file's checksum,
verified here. Anything a batch does not answer (a range over several blocks, an error,
a worker that cannot be reached, a bad checksum) is read on its own by the reader, with
its failover, so a batch never answers worse than single reads would.
Owns: grouping, splitting and sending batches, and placing their payloads.
Never: fail over itself (the reader does, range by range).
"""
from __future__ import annotations

from .. import blocks, placement
from ..errors import FluidError, NotHere, Unavailable
from ..wire import BlockRead

READV_MAX = 64             # reads in one batch (the servers' bound)


class Item:
    """One range of a batch and what became of it."""

    __slots__ = ("pos", "entry", "start", "end", "req", "key", "data")

    def __init__(self, pos: int, entry: dict, start: int, end: int) -> None:
        self.pos, self.entry, self.start, self.end = pos, entry, start, end
        self.req: BlockRead | None = None
        self.key = ""
        self.data = None


def read_many(reader, jobs: list[tuple[dict, int, int]]) -> list:
    """Bytes of each (listed file entry, start, end) range, in order; a range that fails
    gives its exception in its place."""
    m = reader.cluster.map()
    bs = m["block_size"]
    items = [Item(i, e, s, end) for i, (e, s, end) in enumerate(jobs)]
    groups: dict[str, list[Item]] = {}
    alone: list[Item] = []
    for it in items:
        if it.start >= it.end:
            it.data = b""
            continue
        index = it.start // bs
        if (it.end - 1) // bs != index:
            alone.append(it)
            continue
        it.req = reader._request(it.entry, index, it.start - index * bs, it.end - it.start, bs)
        it.key = blocks.block_key(it.entry["fid"], index, bs)
        try:
            if reader.short_circuit:
                length = blocks.block_length(it.entry["size"], bs, index)
                local = reader.local.read(it.key, length, (it.entry["fid"], index))
                if local is not None:
                    it.data = bytes(local[it.req.offset:it.req.offset + it.end - it.start])
                    continue
            order = reader._route(it.key, reader.cluster.dataset(it.req.dataset), m,
                                  it.req.version)
        except FluidError:
            order = []
        if order:                  # (no owner: read alone below, with its failover)
            groups.setdefault(order[0], []).append(it)
    by_id = {w["id"]: w for w in placement.every_worker(m)}
    chunks = [(by_id[wid], chunk) for wid, its in groups.items()
              for chunk in _split(its, reader.settings.max_data)]
    if len(chunks) > 1:
        list(reader.executor().map(lambda job: _send(reader, m, *job), chunks))
    elif chunks:
        _send(reader, m, *chunks[0])
    alone += [it for it in items if it.data is None and it.req is not None]

    def single(it: Item):
        try:
            return reader.read(it.entry, it.start, it.end)
        except Exception as exc:  # noqa: BLE001 - given back in its place
            return exc

    if len(alone) > 1:
        for it, got in zip(alone, reader.executor().map(single, alone), strict=True):
            it.data = got
    elif alone:
        alone[0].data = single(alone[0])
    return [it.data for it in items]


def _split(items: list[Item], max_data: int):
    """Batches of at most READV_MAX reads and `max_data` bytes (each read's bytes as
    the servers count them: blocks.reply_length, which a range within its file equals)."""
    chunk, size = [], 0
    for it in items:
        n = it.end - it.start
        if chunk and (len(chunk) == READV_MAX or size + n > max_data):
            yield chunk
            chunk, size = [], 0
        chunk.append(it)
        size += n
    if chunk:
        yield chunk


def _served(got) -> bool:
    return isinstance(got, dict) and isinstance(got.get("n"), int) and got["n"] >= 0


def _lengths(result: dict) -> list[int]:
    """The payload parts of a batch's reply: one per item served."""
    return [got["n"] for got in result["items"] if _served(got)]


def _send(reader, m: dict, w: dict, chunk: list[Item]) -> None:
    """One batch to worker `w`: its serving processes first, then the worker itself for
    what they do not hold. Items left without data are read alone by the caller."""
    left = chunk
    for address in (w.get("serve"), w["address"]):
        if not address or not left:
            continue
        try:
            result, parts = reader.cluster.call(
                address, "readv", {"r": [it.req.to_args() for it in left]}, split=_lengths,
                served=address == w.get("serve"))
        except (NotHere, Unavailable):
            continue
        except FluidError:
            return                                   # read alone: each gets its answer
        reader.counters["batches"] += 1
        reader.cluster.saw_version(result.get("mv", 0), m)
        answers = result.get("items") if isinstance(result, dict) else None
        if not isinstance(answers, list) or len(answers) != len(left) or \
                not isinstance(parts, list):
            return                                 # not a batch's answer: read alone
        parts, missed = iter(parts), []
        for it, got in zip(left, answers, strict=True):
            if not _served(got):
                if isinstance(got, dict) and got.get("miss"):
                    missed.append(it)
                continue                           # an error: read alone
            data = next(parts)
            if len(data) != it.end - it.start or not reader.intact(it.key, it.req, got, data):
                continue
            it.data = bytes(data)
            reader.counters["remote"] += 1
            if address == w.get("serve"):
                reader.counters["served"] += 1
        left = missed
