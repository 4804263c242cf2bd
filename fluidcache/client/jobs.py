"""Running a read's block jobs on the reader's threads, so that nothing writes into the
caller's buffer once the read has returned or raised.

Owns: settling a read's futures (every job done or never begun before a return or an
error), telling a fetch thread from another (a fetch thread never waits on jobs it
would queue behind itself), and what a reader closed mid-read answers.
Never: choose blocks or workers (reader.py does).
"""
from __future__ import annotations

import threading
from concurrent.futures import ALL_COMPLETED, FIRST_EXCEPTION, Future, wait

from ..errors import Unavailable

_FETCHING = threading.local()       # `yes` in a reader's own fetch threads
_POLL = 0.25                        # seconds between looks at cancelled futures


def fetching() -> None:
    """The fetch pool's initializer: marks its threads."""
    _FETCHING.yes = True


def in_fetch_thread() -> bool:
    return getattr(_FETCHING, "yes", False)


def closed() -> Unavailable:
    return Unavailable("this reader was closed while it read; open the file again")


def _failed(f: Future) -> bool:
    return f.done() and not f.cancelled() and f.exception() is not None


def wait_all(futures: list[Future], first_error: bool = False) -> None:
    """concurrent.futures.wait that also ends on futures cancelled while queued (a pool
    shut down with cancel_futures cancels them without waking waiters): until every
    future is done, or (first_error) one failed."""
    pending = [f for f in futures if not f.done()]
    while pending:
        if first_error and any(_failed(f) for f in futures):
            return
        wait(pending, timeout=_POLL,
             return_when=FIRST_EXCEPTION if first_error else ALL_COMPLETED)
        pending = [f for f in pending if not f.done()]


def settle(futures: list[Future]) -> None:
    """Wait for jobs that write into one caller's buffer; on the first error cancel
    those not begun and wait for the rest, then raise it (jobs the reader's closing
    cancelled: Unavailable): nothing writes into the buffer after this returns or
    raises (it may be freed, or reused, at once)."""
    try:
        wait_all(futures, first_error=True)
    except BaseException:                 # interrupted: the same, then the interrupt
        for f in futures:
            f.cancel()
        wait_all(futures)
        raise
    if any(_failed(f) for f in futures):
        for f in futures:
            f.cancel()
        wait_all(futures)
    for f in futures:                     # the first error in block order
        if _failed(f):
            raise f.exception()
    if any(f.cancelled() for f in futures):
        raise closed()


def submit_all(pool, fn, jobs: list) -> list[Future]:
    """fn(job) of each job on `pool()`; a pool shut down meanwhile (the reader closed)
    is Unavailable, raised once the jobs it took are done."""
    futures: list[Future] = []
    try:
        for j in jobs:
            futures.append(pool().submit(fn, j))
    except RuntimeError:
        for f in futures:
            f.cancel()
        wait_all(futures)
        raise closed() from None
    return futures


def each(pool, fn, jobs: list) -> list:
    """[fn(job) for job in jobs], at once on `pool()` (one job: here), settled."""
    if len(jobs) <= 1:
        return [fn(j) for j in jobs]
    futures = submit_all(pool, fn, jobs)
    settle(futures)
    return [f.result() for f in futures]


__all__ = ["each", "fetching", "in_fetch_thread", "settle", "submit_all", "wait_all"]
