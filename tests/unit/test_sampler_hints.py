"""The substituting sampler's reuse hints, without a cluster: a filesystem that records
what it is told (and takes its time, as a worker a few ms away does)."""
from __future__ import annotations

import threading
import time

import pytest

from fluidcache.integrations.sampler import SubstitutingSampler

from ..helpers import wait_for


class _Told:
    def __init__(self, slow: float = 0.02) -> None:
        self.slow, self.lock = slow, threading.Lock()
        self.soon: list[list[str]] = []
        self.later: list[str] = []

    def prefetch(self, path) -> bool:
        return True

    def hint_reuse(self, paths, soon: bool) -> int:
        time.sleep(self.slow)
        with self.lock:
            if soon:
                self.soon.append(list(paths))
            else:
                self.later += paths
        return len(paths)


class _Data:
    def __init__(self, n: int) -> None:
        self.paths = [f"ds/f{i:04d}" for i in range(n)]
        self.fs = _Told()

    def __len__(self) -> int:
        return len(self.paths)


def _sampler(ds, cached: set[int], **kw) -> SubstitutingSampler:
    s = SubstitutingSampler(ds, window=8, prefetch=4, max_wait=0.01, **kw)
    s.refresh = lambda: set(cached)            # (the block reports, without a master)
    return s


@pytest.mark.parametrize("n,lag", [(200, 0), (1000, 8), (150, 500)])
def test_every_sample_but_the_last_lag_is_said_done_once_in_order(n, lag):
    ds = _Data(n)
    s = _sampler(ds, cached=set(range(0, n, 2)), reuse_lag=lag)
    s.set_epoch(3)
    got = list(s)
    assert sorted(got) == list(range(n))
    want = max(0, n - lag)
    # the last hints go out after the epoch ended, in the background: all of them
    wait_for(lambda: len(ds.fs.later) == want == s.stats["done"], timeout=30,
             what="the epoch's last hints")
    assert ds.fs.later == [ds.paths[i] for i in got[:want]]     # handed-out order
    # at the start: the epoch's cached samples, in the permutation's order
    assert ds.fs.soon == [[ds.paths[i] for i in s.order() if i % 2 == 0]]
    assert s.stats["held_blocks"] == n // 2 + n % 2 and s.stats["hints_failed"] == 0


def test_an_epoch_left_early_sends_nothing_more_and_leaves_no_thread():
    ds = _Data(500)
    s = _sampler(ds, cached=set(range(500)), reuse_lag=0)
    it = iter(s)
    for _ in range(130):
        next(it)
    it.close()
    wait_for(lambda: not [t for t in threading.enumerate()
                          if t.name.startswith(("fc-reuse", "fc-substitute"))],
             timeout=30, what="the sampler's threads to end")
    told = len(ds.fs.later)
    assert told <= 130 and told % 64 == 0      # whole batches only, none after close


def test_a_failing_hint_is_counted_and_the_epoch_goes_on():
    ds = _Data(100)

    def refuse(paths, soon):
        raise ConnectionError("no worker")
    ds.fs.hint_reuse = refuse
    s = _sampler(ds, cached=set(range(50)), reuse_lag=10)
    assert sorted(s) == list(range(100))
    wait_for(lambda: s.stats["hints_failed"] == 3, timeout=30,   # soon, 64, the rest
             what="the failed hints counted")
    assert s.stats["done"] == 0 and s.stats["held_blocks"] == 0
