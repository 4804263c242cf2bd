"""Retry delays with a deadline: the one backoff every client retry loop uses.

Owns: how long to wait before the next attempt (doubling from `first` up to `cap`) and
whether the deadline leaves room for it.
Never: decide what to retry, or catch anything; the caller's loop does.
"""
from __future__ import annotations

import time
from collections.abc import Callable


class Backoff:
    """`wait()` sleeps the next delay and returns True, or returns False at once when
    that delay would end past `timeout` seconds from the start (give up then).

        backoff = Backoff(30.0)
        while True:
            try:
                return call()
            except Unavailable:
                if not backoff.wait():
                    raise

    The clock and the sleep are injected (tests pass fakes)."""

    __slots__ = ("deadline", "delay", "cap", "waits", "_sleep", "_clock")

    def __init__(self, timeout: float, first: float = 0.1, cap: float = 2.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.deadline = clock() + timeout
        self.delay, self.cap, self.waits = first, cap, 0
        self._clock, self._sleep = clock, sleep

    def wait(self) -> bool:
        if self._clock() + self.delay > self.deadline:
            return False
        self._sleep(self.delay)      # the backoff itself: the caller retries after it
        self.delay = min(self.cap, self.delay * 2)
        self.waits += 1
        return True


__all__ = ["Backoff"]
