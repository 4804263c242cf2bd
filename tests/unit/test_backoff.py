"""The client's one backoff: doubling delays, capped, that stop at the deadline."""
from __future__ import annotations

from fluidcache.backoff import Backoff


class Clock:
    def __init__(self):
        self.now, self.slept = 0.0, []

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.slept.append(s)
        self.now += s


def test_delays_double_up_to_the_cap_and_stop_at_the_deadline():
    c = Clock()
    b = Backoff(5.0, first=0.5, cap=2.0, clock=c, sleep=c.sleep)
    while b.wait():
        pass
    assert c.slept == [0.5, 1.0, 2.0] and b.waits == 3    # a 4th (2.0) would end at 5.5
    assert c.now <= 5.0


def test_no_time_no_wait():
    c = Clock()
    assert not Backoff(0.0, clock=c, sleep=c.sleep).wait() and c.slept == []
