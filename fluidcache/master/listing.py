"""Directory listings as the master caches them: compact, sorted, pageable.

One `DirListing` per directory: parallel arrays sorted by child name (the last path
component only), so a million listed files cost well under 300 bytes each, `info` of a
file is a binary search, and `ls` is served in pages. File ids (hashes of URL and
version) are computed when an entry is sent, not stored. A listing is immutable: a file
refreshed on its own makes a new listing with that one entry replaced (`with_entry`).
Pure: built from the under store's entries by the shell; no I/O, no clocks.
"""
from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable

import msgpack

from ..blocks import file_id
from ..understore.versions import etag_field

FILE, DIR = 0, 1
_NONE = float("nan")           # a time the store did not give


class DirListing:
    __slots__ = ("names", "kinds", "sizes", "versions", "mtimes", "created")

    def __init__(self, entries: Iterable[tuple]) -> None:
        """`entries`: (child name, FILE|DIR, size, version[, mtime, created]); times are
        seconds or None; later duplicates win."""
        merged: dict[str, tuple] = {}       # name -> (kind, size, version, mtime, created)
        for name, kind, size, version, *t in entries:
            merged[name] = (kind, size, version, *(t + [None, None])[:2])
        order = sorted(merged)
        kinds, sizes, versions = bytearray(), array("q"), []
        mtimes, created = array("d"), array("d")
        for n in order:
            kind, size, version, mtime, made = merged[n]
            kinds.append(kind)
            sizes.append(size)
            versions.append(version)
            mtimes.append(_NONE if mtime is None else mtime)
            created.append(_NONE if made is None else made)
        self.names, self.kinds, self.sizes = tuple(order), bytes(kinds), sizes
        self.versions, self.mtimes, self.created = tuple(versions), mtimes, created

    def __len__(self) -> int:
        return len(self.names)

    def __eq__(self, other) -> bool:
        return isinstance(other, DirListing) and self.names == other.names and \
            self.kinds == other.kinds and self.sizes == other.sizes and \
            self.versions == other.versions

    __hash__ = None

    def find(self, name: str) -> int | None:
        i = bisect_left(self.names, name)
        return i if i < len(self.names) and self.names[i] == name else None

    def page(self, after: str | None, limit: int) -> tuple[range, str | None]:
        """Indices of up to `limit` entries after the name `after`, and the cursor for
        the next page (None when this page is the last)."""
        start = 0 if after is None else bisect_right(self.names, after)
        end = min(len(self.names), start + max(1, limit))
        return range(start, end), (self.names[end - 1] if end < len(self.names) else None)

    def entry(self, i: int) -> tuple[str, int, int, str]:
        return self.names[i], self.kinds[i], self.sizes[i], self.versions[i]

    def times(self, i: int) -> tuple[float | None, float | None]:
        m, c = self.mtimes[i], self.created[i]
        return (None if math.isnan(m) else m), (None if math.isnan(c) else c)

    def rows(self) -> Iterable[tuple]:
        for i in range(len(self.names)):
            yield (*self.entry(i), *self.times(i))

    def with_entry(self, name: str, row: tuple | None) -> "DirListing":
        """A copy with `name`'s entry replaced by `row` ((kind, size, version, mtime,
        created)), or removed (None)."""
        rows = [r for r in self.rows() if r[0] != name]
        if row is not None:
            rows.append((name, *row))
        return DirListing(rows)


def _reply(listing: DirListing, i: int, prefix: str, url_of, scope: str) -> dict:
    name, kind, size, version = listing.entry(i)
    if kind == DIR:
        return {"name": prefix + name, "size": 0, "type": "directory"}
    out = {"name": prefix + name, "size": size, "type": "file", "version": version,
           "fid": file_id(url_of(name), version, scope)}
    mtime, created = listing.times(i)
    if mtime is not None:
        out["mtime"] = mtime
    if created is not None:
        out["created"] = created
    etag = etag_field(version)
    if etag is not None:
        out["ETag"] = etag
    return out


def ls_page(listing: DirListing, prefix: str, url_of, after: str | None,
            limit: int, scope: str = "", max_bytes: int = 512 * 1024
            ) -> tuple[list[dict], str | None]:
    """One page of a directory as clients see it: at most `limit` entries and at most
    `max_bytes` of msgpack (long names make short pages). `prefix` is
    'dataset/dir/', `url_of(child)` the under-store URL of a child and `scope` the
    namespace (for ids)."""
    rng, nxt = listing.page(after, limit)
    out, budget = [], max_bytes
    for i in rng:
        reply = _reply(listing, i, prefix, url_of, scope)
        budget -= len(msgpack.packb(reply, use_bin_type=True))
        if out and budget < 0:
            return out, listing.names[i - 1]
        out.append(reply)
    return out, nxt


def info_entry(listing: DirListing, prefix: str, url_of, child: str,
               scope: str = "") -> dict | None:
    i = listing.find(child)
    return None if i is None else _reply(listing, i, prefix, url_of, scope)
