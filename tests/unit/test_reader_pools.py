"""A large read's blocks are read at once (local ones on the copy threads, the others on
the fetch threads) without ever waiting on a queue it fills itself, without queueing
behind other files' fetches, and never writing into a buffer after the read ended."""
from __future__ import annotations

import threading
import time

import pytest

from fluidcache.client import batch
from fluidcache.client.reader import BlockReader
from fluidcache.errors import Unavailable

from .fakes import OneWorkerCluster

BS = 1024
CONTENT = bytes(i % 251 for i in range(4 * BS))
ENTRY = {"name": "ds/f", "size": len(CONTENT), "version": "e:x", "fid": "0" * 32}


def _reader(local: bool, fanout: int = 2) -> BlockReader:
    reader = BlockReader(OneWorkerCluster(BS, 0, fanout=fanout), short_circuit=True)

    def local_read_into(key, dst, expect):
        if not local:
            return False
        dst[:] = CONTENT[expect[1] * BS:expect[1] * BS + len(dst)]
        return True

    def piece(entry, p, m=None, into=None):
        return CONTENT[p.index * BS + p.offset:p.index * BS + p.offset + p.length]

    reader.local.read_into = local_read_into
    reader.local.holds = lambda key: local
    reader.local.read = lambda key, length, expect: None
    reader.piece = piece
    return reader


def _within(seconds: float, fn):
    """fn()'s answer, or a failure (not a hung test) when it takes longer."""
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(got=fn()), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "no answer: the read waits on a queue it fills itself"
    return out["got"]


@pytest.mark.parametrize("local", [True, False], ids=["local blocks", "remote blocks"])
def test_many_multi_block_ranges_at_once_never_deadlock_the_fetch_threads(local):
    reader = _reader(local, fanout=2)
    ranges = [(ENTRY, 0, 2 * BS), (ENTRY, BS, 3 * BS)] * 8
    got = _within(10, lambda: batch.read_many(reader, ranges))
    assert got == [CONTENT[:2 * BS], CONTENT[BS:3 * BS]] * 8
    reader.close()


def test_local_blocks_never_queue_behind_other_files_fetches():
    reader = _reader(local=True, fanout=2)
    release = threading.Event()
    stuck = [reader.executor().submit(release.wait, 30) for _ in range(4)]  # slow fetches
    try:
        buf = bytearray(2 * BS)
        t0 = time.monotonic()
        assert _within(10, lambda: reader.read_into(ENTRY, 0, memoryview(buf))) == 2 * BS
        assert bytes(buf) == CONTENT[:2 * BS]
        assert time.monotonic() - t0 < 10 and not any(f.done() for f in stuck)
    finally:
        release.set()
        reader.close()


def test_a_reader_closed_during_a_read_says_so_and_writes_nothing_after():
    reader = _reader(local=True, fanout=2)
    started, futures = threading.Event(), []
    buf = bytearray(3 * BS)

    def slow_local(key, dst, expect):
        started.set()
        time.sleep(0.1)                  # a copy that takes a while (not a wait)
        dst[:] = CONTENT[expect[1] * BS:expect[1] * BS + len(dst)]
        return True

    reader.local.read_into = slow_local
    pool = reader.copiers()
    real_submit = pool.submit

    def submit(*args, **kwargs):         # the reader is closed between two submits
        if started.is_set():
            reader.close()
        futures.append(real_submit(*args, **kwargs))
        started.wait(5)
        return futures[-1]

    pool.submit = submit
    with pytest.raises(Unavailable, match="closed"):
        reader.read_into(ENTRY, 0, memoryview(buf))
    # the jobs it had handed out were over before it raised: none writes into buf later
    assert futures and all(f.done() for f in futures)


@pytest.mark.parametrize("local", [True, False], ids=["local blocks", "remote blocks"])
def test_a_reader_closed_with_jobs_still_queued_answers_unavailable_not_never(local):
    """close() cancels the jobs not begun (a pool shut down with cancel_futures never
    wakes their waiters): the read ends, with Unavailable, once the begun ones end."""
    reader = _reader(local, fanout=1)
    big = bytes(range(256)) * (6 * BS // 256)
    entry = dict(ENTRY, size=len(big))
    gate, began = threading.Event(), threading.Event()

    def slow(dst, i):
        began.set()
        gate.wait(10)
        dst[:] = big[i * BS:(i + 1) * BS]

    if local:
        reader.local.read_into = lambda key, dst, expect: (slow(dst, expect[1]), True)[1]
    else:
        reader.piece = lambda e, p, m=None, into=None: (slow(into, p.index), into)[1]
    out: dict = {}

    def read():
        try:
            reader.read_into(entry, 0, memoryview(bytearray(len(big))))
        except Unavailable as exc:
            out["err"] = exc

    t = threading.Thread(target=read, daemon=True)
    t.start()
    assert began.wait(10)
    reader.close()                       # jobs are queued behind the begun ones
    gate.set()
    t.join(10)
    assert not t.is_alive(), "the read never ended"
    assert "closed" in str(out.get("err"))


def test_local_and_remote_blocks_of_one_read_are_read_at_the_same_time():
    reader = _reader(local=True, fanout=2)
    fetched = threading.Event()

    reader.local.holds = lambda key: key == _key(0)      # block 0 is local, 1 is not
    reader.local.read_into = lambda key, dst, expect: (
        fetched.wait(10) and dst.__setitem__(slice(None), CONTENT[:BS]) is None)
    real_piece = reader.piece

    def piece(entry, p, m=None, into=None):
        fetched.set()                     # the remote block is being fetched meanwhile
        return real_piece(entry, p, m, into)

    reader.piece = piece
    buf = bytearray(2 * BS)
    assert _within(10, lambda: reader.read_into(ENTRY, 0, memoryview(buf))) == 2 * BS
    assert bytes(buf) == CONTENT[:2 * BS]
    reader.close()


def test_a_machine_without_local_tiers_makes_no_copy_threads():
    reader = _reader(local=False, fanout=2)
    reader.local.holds = lambda key: False
    buf = bytearray(3 * BS)
    assert reader.read_into(ENTRY, 0, memoryview(buf)) == 3 * BS
    assert bytes(buf) == CONTENT[:3 * BS] and reader._copiers is None
    reader.close()


def _key(index: int) -> str:
    from fluidcache import blocks
    return blocks.block_key(ENTRY["fid"], index, BS)
