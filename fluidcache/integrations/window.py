"""One epoch's order, chosen within a bounded window: cached samples first, the others
once they have landed (the substituting sampler's core; Quiver, FAST'20, substitutes
within a mini-batch window the same way).

The window holds the next `size` samples of the seeded permutation not yielded yet.
Each step yields, from the window, the earliest sample that is ready (cached, or
prefetched and landed); when none is ready, the caller waits for one to land or takes
the window's head. The head is taken anyway once `size - 1` samples have been yielded
after its own place in the permutation. So every sample is yielded exactly once, and
its place in the output differs from its place in the permutation by less than
`size`: |output position - permutation position| <= size - 1.

Pure: no I/O, threads or clocks; `ready` is asked, never remembered.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence


class Window:
    def __init__(self, order: Sequence[int], size: int) -> None:
        if size < 1:
            raise ValueError("the window holds at least one sample")
        self.order, self.size = order, size
        self._pending: list[int] = []       # permutation positions in the window, sorted
        self._next = 0                      # the next permutation position to enter
        self.out = 0                        # samples yielded so far

    def __len__(self) -> int:
        return len(self.order) - self.out

    def fill(self) -> list[int]:
        """Let samples into the window up to its size; the samples (not positions) that
        entered, to prefetch those not ready."""
        entered = []
        while len(self._pending) < self.size and self._next < len(self.order):
            self._pending.append(self._next)
            entered.append(self.order[self._next])
            self._next += 1
        return entered

    def overdue(self) -> bool:
        """Must the head go now (its lateness bound reached)?"""
        return bool(self._pending) and self.out - self._pending[0] >= self.size - 1

    def take(self, ready: Callable[[int], bool]) -> int | None:
        """The next sample: the head if overdue, else the earliest ready one; None when
        none is ready (wait for one to land, or `take_head`)."""
        if not self._pending:
            raise IndexError("the epoch is over")
        if self.overdue():
            return self.take_head()
        for k, pos in enumerate(self._pending):
            if ready(self.order[pos]):
                del self._pending[k]
                self.out += 1
                return self.order[pos]
        return None

    def take_head(self) -> int:
        pos = self._pending.pop(0)
        self.out += 1
        return self.order[pos]

    def waiting(self) -> list[int]:
        """The samples in the window now, earliest first."""
        return [self.order[p] for p in self._pending]


def simulate(order: Sequence[int], size: int, ready: Callable[[int, int], bool]) -> Iterator[int]:
    """The order a window gives when `ready(sample, step)` says what is ready at each
    step and nothing is waited for (tests; the bound holds whatever `ready` says)."""
    w = Window(order, size)
    step = 0
    while len(w):
        w.fill()
        got = w.take(lambda i, s=step: ready(i, s))
        yield w.take_head() if got is None else got
        step += 1
