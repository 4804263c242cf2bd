"""Pages: how every list-shaped reply stays bounded, whatever the size of a dataset.

A server cuts a sorted list into pages of at most `limit` items and about `max_bytes`
of msgpack, with a cursor (the last item's key) for the next page; a client asks for
pages until the cursor is None. Nothing on the wire grows with the size of a dataset,
the number of its files, pins or workers.
Pure: no I/O.
"""
from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence

import msgpack

PAGE_ITEMS = 2000
PAGE_BYTES = 512 * 1024       # half of the default frame limit: room for the envelope


def size_of(item) -> int:
    return len(msgpack.packb(item, use_bin_type=True))


def page(items: Sequence, key: Callable, after, limit: int = PAGE_ITEMS,
         max_bytes: int = PAGE_BYTES) -> tuple[list, object]:
    """(items after the cursor `after`, next cursor or None). `items` are sorted by
    `key(item)`; a page holds at least one item, at most `limit` and about `max_bytes`."""
    keys = [key(i) for i in items]
    start = 0 if after is None else bisect_right(keys, after)
    out, size = [], 0
    for i in range(start, len(items)):
        n = size_of(items[i])
        if out and (len(out) >= limit or size + n > max_bytes):
            return out, keys[i - 1]
        out.append(items[i])
        size += n
    return out, None


def check_cursor(after, limit, max_limit: int = PAGE_ITEMS) -> int:
    """The page size asked for, checked (`after` is a string, a list, or None)."""
    from .errors import InvalidRequest
    if not (after is None or isinstance(after, (str, list))) or not isinstance(limit, int) \
            or isinstance(limit, bool) or not 1 <= limit <= max_limit:
        raise InvalidRequest(f"a page needs 'after' (a cursor) and 'limit' 1..{max_limit}")
    return limit


def pages(call: Callable[[object], dict], field: str) -> Iterator:
    """The items of every page: `call(after)` returns {field: [...], "next": cursor}."""
    after = None
    while True:
        reply = call(after)
        yield from reply[field]
        after = reply.get("next")
        if after is None:
            return


def chunks(items: Sequence, max_bytes: int = PAGE_BYTES // 2,
           limit: int = PAGE_ITEMS) -> Iterator[list]:
    """A request's list cut into chunks that each fit in one frame."""
    out, size = [], 0
    for item in items:
        n = size_of(item)
        if out and (len(out) >= limit or size + n > max_bytes):
            yield out
            out, size = [], 0
        out.append(item)
        size += n
    if out:
        yield out
