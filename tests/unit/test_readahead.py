"""The one readahead policy: sequential reads get the next blocks once; a first read,
a seek or a new block size start over."""
from __future__ import annotations

from fluidcache.client.readahead import Budget, Readahead


def test_small_reads_read_ahead_once_they_move_to_the_next_block():
    r = Readahead(2)
    assert list(r.after(10, 0, 0, 9)) == []         # the first read: a header, maybe
    assert list(r.after(10, 1, 1, 9)) == [2, 3]     # block 0 -> 1: sequential
    assert list(r.after(10, 2, 2, 9)) == [4]        # each block asked for once
    assert list(r.after(10, 7, 7, 9)) == []         # a seek: start over
    assert list(r.after(10, 8, 8, 9)) == []         # nothing after the last block


def test_large_reads_want_their_span_and_the_depth_ahead():
    r = Readahead(2)
    assert list(r.after(10, 0, 1, 9)) == []
    assert list(r.after(10, 2, 3, 9)) == [4, 5, 6]
    assert list(r.after(10, 4, 5, 9)) == [7, 8]
    assert list(r.after(10, 5, 6, 9)) == []         # overlapping: nothing new wanted


def test_off_and_new_block_size():
    assert list(Readahead(0).after(10, 1, 1, 9)) == []
    r = Readahead(2)
    r.after(10, 0, 0, 9)
    assert list(r.after(20, 1, 1, 9)) == []         # another block size: start over


def test_budget_takes_or_goes_without():
    b = Budget(10)
    assert b.take(6) and not b.take(6) and b.take(4)
    b.give(10)
    assert b.used == 0
