"""The one readahead policy: sequential reads get the next blocks once; a first read,
a seek or a new block size start over."""
from __future__ import annotations

from fluidcache.client.readahead import Budget, Readahead


def test_small_reads_read_ahead_once_they_move_to_the_next_block():
    r = Readahead()
    assert list(r.after(10, 0, 0, 9, 2)) == []         # the first read: a header, maybe
    assert list(r.after(10, 1, 1, 9, 2)) == [2, 3]     # block 0 -> 1: the next `depth`
    assert list(r.after(10, 2, 2, 9, 2)) == [4]        # each block asked for once
    assert list(r.after(10, 7, 7, 9, 2)) == []         # a seek: start over
    assert list(r.after(10, 8, 8, 9, 2)) == []         # nothing after the last block


def test_large_reads_want_their_span_and_the_depth_ahead():
    r = Readahead()
    assert list(r.after(10, 0, 1, 9, 2, large=True)) == []
    assert list(r.after(10, 2, 3, 9, 2, large=True)) == [4, 5, 6, 7]   # span 2 + depth 2
    assert list(r.after(10, 4, 5, 9, 2, large=True)) == [8]
    assert list(r.after(10, 5, 6, 9, 2, large=True)) == []   # overlapping: nothing new
    r = Readahead()
    r.after(10, 0, 0, 9, 2, large=True)
    assert list(r.after(10, 1, 1, 9, 2, large=True)) == [2, 3, 4]   # a whole block: 1 + 2


def test_a_block_missed_is_asked_for_again():
    r = Readahead()
    r.after(10, 0, 0, 9, 3)
    assert list(r.after(10, 1, 1, 9, 3)) == [2, 3, 4]
    r.missed(3)                                        # over budget: 3 and 4 not got
    assert list(r.after(10, 2, 2, 9, 3)) == [3, 4, 5]


def test_off_and_new_block_size():
    assert list(Readahead().after(10, 1, 1, 9, 0)) == []
    r = Readahead()
    r.after(10, 0, 0, 9, 2)
    assert list(r.after(10, 1, 1, 9, 0)) == []         # depth 0 (set while open): off
    r = Readahead()
    r.after(10, 0, 0, 9, 2)
    assert list(r.after(20, 1, 1, 9, 2)) == []         # another block size: start over


def test_budget_takes_or_goes_without():
    b = Budget(10)
    assert b.take(6) and not b.take(6) and b.take(4)
    b.give(10)
    assert b.used == 0
