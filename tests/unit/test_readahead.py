"""The one readahead policy: sequential reads get the next blocks once, the window
doubling along a run up to RAMP times the depth; a first read (unless a large one from
the start), a seek or a new block size start over."""
from __future__ import annotations

from fluidcache.client.readahead import Budget, Readahead


def test_small_reads_read_ahead_once_they_move_to_the_next_block():
    r = Readahead()
    assert list(r.after(10, 0, 0, 9, 2)) == []         # the first read: a header, maybe
    assert list(r.after(10, 1, 1, 9, 2)) == [2, 3]     # block 0 -> 1: the next `depth`
    assert list(r.after(10, 2, 2, 9, 2)) == [4, 5, 6]  # each block asked for once; the
    #                                                    window doubled (2 -> 4)
    assert list(r.after(10, 7, 7, 9, 2)) == []         # a seek: start over
    assert list(r.after(10, 8, 8, 9, 2)) == []         # nothing after the last block


def test_large_reads_want_their_span_and_the_depth_ahead():
    r = Readahead()                                   # a stream from the start: at once
    assert list(r.after(10, 0, 1, 99, 2, large=True)) == [2, 3, 4, 5]   # span 2 + depth 2
    assert list(r.after(10, 2, 3, 99, 2, large=True)) == [6, 7, 8, 9]   # span 2 + 2 x 2
    assert list(r.after(10, 4, 5, 99, 2, large=True)) == list(range(10, 16))   # 2 + 4 x 2
    assert list(r.after(10, 5, 6, 99, 2, large=True)) == list(range(16, 25))   # 2 + 8 x 2
    r = Readahead()
    assert list(r.after(10, 3, 4, 9, 2, large=True)) == []    # the first read elsewhere
    assert list(r.after(10, 5, 5, 9, 2, large=True)) == [6, 7, 8]   # a whole block: 1 + 2


def test_a_block_missed_is_asked_for_again():
    r = Readahead()
    r.after(10, 0, 0, 9, 3)
    assert list(r.after(10, 1, 1, 9, 3)) == [2, 3, 4]
    r.missed(3)                                        # over budget: 3 and 4 not got
    assert list(r.after(10, 2, 2, 9, 3)) == [3, 4, 5, 6, 7, 8]   # again; window doubled


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


def test_a_sequential_run_grows_the_window_to_a_cap_and_a_seek_starts_over():
    from fluidcache.client.readahead import RAMP
    r = Readahead()
    r.after(1, 0, 0, 10_000, 2)
    ends, index = [], 1
    for _ in range(10):
        got = r.after(1, index, index, 10_000, 2)
        ends.append(got.stop - index - 1 if got else 0)
        index += 1
    assert ends[:5] == [2, 4, 8, 16, 16] and max(ends) == 2 * RAMP   # the window ahead
    assert list(r.after(1, 5000, 5000, 10_000, 2)) == []            # a seek
    assert list(r.after(1, 5001, 5001, 10_000, 2)) == [5002, 5003]  # from the start again
