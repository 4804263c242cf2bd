"""Block identity and range arithmetic (fluidcache.blocks)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidcache.blocks import Piece, block_count, block_key, block_length, file_id, pieces


def test_file_id_is_deterministic_and_bound_to_url_and_version():
    fid = file_id("s3://b/x.parquet", "etag-1")
    assert fid == file_id("s3://b/x.parquet", "etag-1")
    assert len(fid) == 32 and int(fid, 16) >= 0
    assert fid != file_id("s3://b/x.parquet", "etag-2")   # a changed file gets new keys
    assert fid != file_id("s3://b/y.parquet", "etag-1")


def test_block_key_depends_on_file_index_and_block_size():
    a, b = file_id("u", "v1"), file_id("u", "v2")
    keys = {block_key(f, i, bs) for f in (a, b) for i in range(100) for bs in (1 << 20, 4 << 20)}
    assert len(keys) == 400
    assert block_key(a, 3, 4096) == block_key(a, 3, 4096) != block_key(a, 3, 8192)


@pytest.mark.parametrize("size, bs, n", [
    (0, 4, 0), (1, 4, 1), (4, 4, 1), (5, 4, 2), (8, 4, 2), (9, 4, 3), (10, 1, 10),
])
def test_block_count(size, bs, n):
    assert block_count(size, bs) == n


def test_block_length_last_block_is_short():
    assert [block_length(10, 4, i) for i in range(3)] == [4, 4, 2]
    assert block_length(8, 4, 1) == 4


@pytest.mark.parametrize("size, index", [(10, 3), (10, -1), (0, 0), (8, 2)])
def test_block_length_outside_file_raises(size, index):
    with pytest.raises(ValueError):
        block_length(size, 4, index)


def test_pieces_examples():
    assert pieces(10, 4, 0, 10) == [Piece(0, 0, 4), Piece(1, 0, 4), Piece(2, 0, 2)]
    assert pieces(10, 4, 3, 6) == [Piece(0, 3, 1), Piece(1, 0, 2)]
    assert pieces(10, 4, 5, 100) == [Piece(1, 1, 3), Piece(2, 0, 2)]   # end clamped
    assert pieces(10, 4, 6, 6) == []
    assert pieces(10, 4, 7, 3) == []
    assert pieces(0, 4, 0, 10) == []


@settings(max_examples=300, deadline=None)
@given(size=st.integers(0, 5000), bs=st.integers(1, 700),
       start=st.integers(-50, 5100), end=st.integers(-50, 5100))
def test_pieces_cover_exactly_the_clamped_range(size, bs, start, end):
    got = pieces(size, bs, start, end)
    lo, hi = max(0, min(start, size)), max(0, min(end, size))
    # Contiguous, each inside one real block, and together exactly [lo, hi).
    pos = lo
    for p in got:
        assert p.length > 0
        assert 0 <= p.offset and p.offset + p.length <= block_length(size, bs, p.index)
        assert p.index * bs + p.offset == pos
        pos += p.length
    assert pos == max(lo, hi)
    assert sum(p.length for p in got) == max(0, hi - lo)
    # Reassembling from the blocks gives the same bytes as slicing the file.
    data = bytes(i % 251 for i in range(size))
    blocks = [data[i * bs:(i + 1) * bs] for i in range(block_count(size, bs))]
    assert b"".join(blocks[p.index][p.offset:p.offset + p.length] for p in got) == data[lo:hi]


@given(bs=st.integers(1, 1 << 30))
def test_empty_file_has_no_blocks(bs):
    assert block_count(0, bs) == 0
    assert pieces(0, bs, 0, bs) == []


@pytest.mark.parametrize("bs", [0, -1])
def test_pieces_refuses_a_block_size_that_is_not_positive(bs):
    with pytest.raises(ValueError):
        pieces(10, bs, 0, 10)
