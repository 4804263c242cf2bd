"""The master's compact directory listings: lookup, paging, replies, memory."""
from __future__ import annotations

import tracemalloc

from hypothesis import given, settings, strategies as st

from fluidcache.blocks import file_id
from fluidcache.master.listing import DIR, FILE, DirListing, info_entry, ls_page

names = st.lists(st.text("abcxyz._-0123456789", min_size=1, max_size=8), unique=True,
                 max_size=60)


def _url(child):
    return f"s3://b/p/{child}"


@given(names, st.integers(1, 7))
@settings(max_examples=200, deadline=None)
def test_pages_cover_every_entry_once_in_order(children, limit):
    lst = DirListing((c, FILE, len(c), f"v{c}") for c in children)
    out, after = [], None
    while True:
        page, after = ls_page(lst, "ds/dir/", _url, after, limit)
        assert len(page) <= limit
        out += page
        if after is None:
            break
    assert [e["name"] for e in out] == [f"ds/dir/{c}" for c in sorted(children)]


def test_info_and_replies():
    lst = DirListing([("b.bin", FILE, 5, "e1"), ("a", DIR, 0, ""), ("b.bin", FILE, 7, "e2")])
    assert len(lst) == 2                                     # a later duplicate wins
    e = info_entry(lst, "ds/", _url, "b.bin")
    assert e == {"name": "ds/b.bin", "size": 7, "type": "file", "version": "e2",
                 "fid": file_id("s3://b/p/b.bin", "e2")}
    assert info_entry(lst, "ds/", _url, "a") == {"name": "ds/a", "size": 0, "type": "directory"}
    assert info_entry(lst, "ds/", _url, "nope") is None
    assert ls_page(DirListing([]), "ds/", _url, None, 10) == ([], None)


def test_memory_per_file_is_small():
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    lst = DirListing((f"img{i:08d}.jpg", FILE, 100_000 + i, '"%032x"' % i)
                     for i in range(20_000))
    per_file = (tracemalloc.get_traced_memory()[0] - base) / len(lst)
    tracemalloc.stop()
    assert per_file <= 300, per_file


def test_long_names_make_short_pages_that_still_cover_everything():
    long = [("n" * 900) + f"{i:04d}" for i in range(1500)]
    lst = DirListing((c, FILE, 1, "v") for c in long)
    out, after, pages = [], None, 0
    while True:
        page, after = ls_page(lst, "ds/", _url, after, 2000)
        pages += 1
        assert sum(len(e["name"]) for e in page) < 600 * 1024
        out += page
        if after is None:
            break
    assert pages > 1 and [e["name"] for e in out] == [f"ds/{c}" for c in sorted(long)]
