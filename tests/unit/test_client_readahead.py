"""An open file read sequentially in small pieces from a worker on another machine has
the next blocks' bytes fetched in the background (the next read takes them), within
the process's budget; close() cancels them and gives the budget back. A real
BlockReader with a fake cluster whose remote reads wait on a gate."""
from __future__ import annotations

import threading

import pytest

from fluidcache.client.file import FluidFile
from fluidcache.client.reader import BlockReader
from fluidcache.errors import StaleVersion

from .fakes import OneWorkerCluster

BS = 1024
WAIT = 10.0


class GatedCluster(OneWorkerCluster):
    """One remote worker serving `content`; every read not made by the test's own
    thread waits for `gate`. Records each call as (op, block, made in the foreground)."""

    def __init__(self, content: bytes, budget: int = 64 * BS, fanout: int = 4):
        super().__init__(BS, budget, fanout)
        self.content = content
        self.gate = threading.Event()
        self.fail: dict[int, Exception] = {}        # block -> what its reads raise
        self.calls: list[tuple[str, int, bool]] = []
        self.changed = threading.Condition()
        self.main = threading.get_ident()

    def call(self, address, op, args, into=None):
        foreground = threading.get_ident() == self.main
        with self.changed:
            self.calls.append((op, args["b"], foreground))
            self.changed.notify_all()
        if op == "prefetch":
            return {}, b""
        if not foreground:
            assert self.gate.wait(WAIT)
        if args["b"] in self.fail:
            raise self.fail[args["b"]]
        start = args["b"] * BS
        return {}, self.content[start:start + BS]

    def reads(self, index: int, foreground: bool | None = None) -> int:
        with self.changed:
            return sum(1 for op, b, fg in self.calls if op == "read" and b == index
                       and (foreground is None or fg == foreground))

    def wait_for(self, pred) -> bool:
        with self.changed:
            return self.changed.wait_for(pred, WAIT)


class FakeFs:
    def __init__(self, client, readahead=2):
        self.client, self.readahead = client, readahead

    def invalidate_cache(self, path):
        pass


def _open(fs, name="ds/f", size=8 * BS):
    return FluidFile(fs, name, {"name": name, "size": size, "version": "e:x",
                                "fid": "0" * 32})


def _content(n=8):
    return bytes(i % 251 for i in range(n * BS))


def test_small_sequential_reads_get_the_next_blocks_bytes_in_the_background():
    content = _content()
    cluster = GatedCluster(content)
    reader = BlockReader(cluster, short_circuit=False)
    f = _open(FakeFs(reader, readahead=2))
    q = BS // 4
    got = bytearray()
    for _ in range(4):                              # block 0: the first read, no readahead
        got += f.read(q)
    got += f.read(q)                                # block 0 -> 1: sequential
    # blocks 2 and 3 are being fetched (as data, by the reader's threads) before any
    # read asks for them
    assert cluster.wait_for(lambda: cluster.reads(2, False) and cluster.reads(3, False)), \
        cluster.calls
    assert cluster.reads(2, True) == 0 and cluster.reads(3, True) == 0
    cluster.gate.set()
    while chunk := f.read(q):
        got += chunk
    assert bytes(got) == content
    for b in range(2, 8):       # each fetched once: ahead of its read, or by the read
        assert cluster.reads(b) == 1, (b, cluster.calls)   # when its fetch had not begun
    assert cluster.reads(2, True) == 0 and cluster.reads(3, True) == 0
    assert not [c for c in cluster.calls if c[0] == "prefetch"]
    f.close()
    reader.executor().shutdown(wait=True)
    assert reader.budget.used == 0


def test_close_cancels_readahead_and_gives_its_budget_back():
    content = _content()
    cluster = GatedCluster(content, fanout=1)       # one thread: block 3 waits its turn
    reader = BlockReader(cluster, short_circuit=False)
    f = _open(FakeFs(reader, readahead=2))
    assert f.read(10) == content[:10]
    f.seek(BS)
    assert f.read(10) == content[BS:BS + 10]
    assert cluster.wait_for(lambda: cluster.reads(2, False) == 1)
    assert reader.budget.used == 2 * BS             # blocks 2 and 3 hold their bytes
    f.close()
    assert reader.budget.used == 0
    cluster.gate.set()
    reader.executor().shutdown(wait=True)
    assert cluster.reads(3) == 0                    # cancelled before it started
    assert reader.budget.used == 0


def test_the_budget_bounds_the_bytes_in_flight():
    content = _content(16)
    cluster = GatedCluster(content, budget=3 * BS)
    reader = BlockReader(cluster, short_circuit=False)
    fs = FakeFs(reader, readahead=4)
    files = [_open(fs, f"ds/f{i}", 16 * BS) for i in range(4)]
    for f in files:                                 # each wants 4 blocks ahead
        for b in range(2):
            f.seek(b * BS)
            assert f.read(BS // 2) == content[b * BS:b * BS + BS // 2]
    assert reader.budget.used == 3 * BS
    assert reader.counters["readahead"] == 3        # 3 blocks of budget: 3 fetches
    cluster.gate.set()
    f = files[0]                                    # takes blocks 2.. as it reads on
    f.seek(2 * BS)
    assert f.read(BS // 2) == content[2 * BS:2 * BS + BS // 2]
    assert reader.budget.used <= 3 * BS
    for f in files:
        f.close()
    reader.executor().shutdown(wait=True)
    assert reader.budget.used == 0


def test_a_failed_background_fetch_raises_its_error_without_a_second_wait():
    content = _content()
    cluster = GatedCluster(content)
    cluster.fail[2] = StaleVersion("e:x is gone")
    cluster.gate.set()
    reader = BlockReader(cluster, short_circuit=False)
    f = _open(FakeFs(reader, readahead=2))
    f.read(BS // 2)
    f.seek(BS)
    f.read(BS // 2)
    assert cluster.wait_for(lambda: cluster.reads(2, False) == 1)
    f.seek(2 * BS)
    with pytest.raises(StaleVersion):
        f.read(10)
    assert cluster.reads(2, True) == 0     # its error is the read's (a cluster error is
                                           # not waited for twice)
    f.close()
    reader.executor().shutdown(wait=True)
    assert reader.budget.used == 0


def test_a_one_block_file_makes_no_readahead_state():
    content = _content(1)[:BS - 3]
    cluster = GatedCluster(content)
    reader = BlockReader(cluster, short_circuit=False)
    f = _open(FakeFs(reader), size=BS - 3)
    assert f.read(100) == content[:100] and f.read() == content[100:]
    assert f._reads.ahead is None and f._reads.pending is None
    f.close()


def _moved_to_block_1(f) -> None:
    """Read in block 0, then in block 1: blocks 2 and 3 are asked for ahead."""
    f.read(10)
    f.seek(BS)
    f.read(10)


def test_a_fetch_ahead_keeps_the_block_size_it_was_asked_at():
    """Seen: a fetch queued under one block size ran after the cluster map said another
    one and fetched block 3 of the new size; the read took it as block 3 of the old."""
    content = _content()
    cluster = GatedCluster(content, fanout=1)
    sizes = [BS]
    cluster.map = lambda refresh=False: {"block_size": sizes[0], "version": 0,
                                         "workers": [{"id": "w1", "address": "x:1"}]}
    plain = cluster.call

    def call(address, op, args, into=None):      # serves the block size it is asked at
        if args["bs"] == BS:
            return plain(address, op, args, into)
        start = args["b"] * args["bs"]
        return {}, content[start:start + args["bs"]]
    cluster.call = call
    reader = BlockReader(cluster, short_circuit=False)
    f = _open(FakeFs(reader, readahead=2))
    _moved_to_block_1(f)
    ahead = dict(f._reads.pending)
    assert set(ahead) == {(BS, 2), (BS, 3)}
    sizes[0] = 2 * BS                             # the map moves while they wait
    cluster.gate.set()
    import concurrent.futures as cf
    cf.wait(ahead.values(), timeout=WAIT)
    sizes[0] = BS
    f.seek(3 * BS)
    got = f.read(10)
    assert got == content[3 * BS:3 * BS + 10]     # never block 3 of another size
    f.close()
    reader.executor().shutdown(wait=True)


def test_readahead_of_the_parent_is_not_waited_for_after_a_fork():
    """Seen: a child forked with an open file waited forever on its parent's fetches
    (no thread of the child would finish them)."""
    from fluidcache.client import conn
    content = _content()
    cluster = GatedCluster(content, fanout=1)
    reader = BlockReader(cluster, short_circuit=False)
    f = _open(FakeFs(reader, readahead=2))
    _moved_to_block_1(f)
    running = f._reads.pending[(BS, 2)]
    conn.FORKS[0] += 1                            # what os.fork's hook does in a child
    f.seek(2 * BS)
    assert f.read(10) == content[2 * BS:2 * BS + 10]
    assert not running.done()                     # read without waiting for it
    cluster.gate.set()
    f.close()
    reader.executor().shutdown(wait=True)


def test_a_read_in_flight_when_its_file_closes_adds_no_readahead():
    """Seen: close() while another thread's read fetched its block; that read then
    added readahead to the closed file, whose budget was never given back."""
    content = _content()
    cluster = GatedCluster(content)
    reader = BlockReader(cluster, short_circuit=False)
    f = _open(FakeFs(reader, readahead=2))
    f.read(10)
    f.seek(BS)
    got = []
    t = threading.Thread(target=lambda: got.append(f.read(10)))   # waits at the gate
    t.start()
    assert cluster.wait_for(lambda: cluster.reads(1) == 1)
    f.close()
    cluster.gate.set()
    t.join(WAIT)
    assert got == [content[BS:BS + 10]]
    reader.executor().shutdown(wait=True)
    assert reader.budget.used == 0 and not f._reads.pending


def test_a_read_does_not_wait_for_its_block_queued_behind_other_fetches():
    content = _content()
    cluster = GatedCluster(content, fanout=1)     # block 2's fetch holds the one thread
    reader = BlockReader(cluster, short_circuit=False)
    f = _open(FakeFs(reader, readahead=2))
    _moved_to_block_1(f)
    running = f._reads.pending[(BS, 2)]
    f.seek(3 * BS)                                # block 3's fetch has not begun
    assert f.read(10) == content[3 * BS:3 * BS + 10]
    assert not running.done() and cluster.reads(3, True) == 1
    cluster.gate.set()
    f.close()
    reader.executor().shutdown(wait=True)
    assert reader.budget.used == 0
