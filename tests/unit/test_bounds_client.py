"""Bounds on the client and master shells, with fakes: every open file's readahead comes
out of one budget per process, and a snapshot that fails after a change was journaled
does not report the change as failed."""
from __future__ import annotations

import threading

from fluidcache.client.file import FluidFile
from fluidcache.client.reader import BlockReader

from .fakes import OneWorkerCluster

BS = 1024


class FakeCluster(OneWorkerCluster):
    """The reader's view of a cluster of one worker, whose blocks are `content`'s; its
    readahead hints stay in flight until `release` is set."""

    def __init__(self, budget: int, content: bytes = b""):
        super().__init__(BS, budget)
        self.content = content
        self.release = threading.Event()

    def call(self, address, op, args, into=None):
        if op == "prefetch":
            self.release.wait(10)          # hints stay in flight
            return {}, b""
        start = args["b"] * args["bs"]
        if self.content:
            return {}, self.content[start:start + args["bs"]]
        return {}, bytes([args["b"] % 256]) * BS


class FakeFs:
    readahead = 4

    def __init__(self, client):
        self.client = client

    def invalidate_cache(self, path):
        pass


def test_readahead_of_all_open_files_stays_within_one_budget():
    cluster = FakeCluster(budget=3 * BS)
    client = BlockReader(cluster, short_circuit=False)
    fs = FakeFs(client)
    files = [FluidFile(fs, f"ds/f{i}", {"name": f"ds/f{i}", "size": 20 * BS, "version": "e:x",
                                        "fid": "0" * 32}) for i in range(6)]
    for f in files:                        # sequential: each wants 4 blocks ahead
        for b in range(2):
            assert f.read(BS // 2) == bytes([b]) * (BS // 2)
            f.seek((b + 1) * BS)
    in_flight = client.budget.used // BS
    assert client.counters["readahead"] == in_flight <= 3, in_flight   # the budget: 3 blocks
    cluster.release.set()
    for f in files:
        f.close()
    client.executor().shutdown(wait=True)
    assert client.budget.used == 0         # every reservation given back


def test_a_failed_snapshot_does_not_fail_a_journaled_change(tmp_path):
    from fluidcache.master.actor import Master
    from fluidcache.master.journal import Journal

    class FullDisk(Journal):
        def snapshot(self, state):
            raise OSError(28, "No space left on device")

    m = Master({"tiers": [{"medium": "MEM", "path": str(tmp_path / "mem"), "quota": "1MiB"}],
                "journal_dir": str(tmp_path / "journal")})
    try:
        m.journal = FullDisk(str(tmp_path / "journal"), fsync=False)
        m.journal.appended = 999                     # the next change asks for a snapshot
        out = m.ops["namespace_create"]("default", {"name": "team"})
        assert out["namespace"] == "team" and "team" in m.core.tokens
    finally:
        m.shutdown()


def test_an_open_file_survives_a_new_block_size():
    """The cluster started again with another block size while a file is open: its reads
    use blocks of the new size, never a block of the old one (seen: b"" mid-file)."""
    content = bytes(i % 251 for i in range(8 * BS))

    cluster = FakeCluster(budget=0, content=content)
    f = FluidFile(FakeFs(BlockReader(cluster, short_circuit=False)), "ds/f",
                  {"name": "ds/f", "size": len(content), "version": "e:x", "fid": "0" * 32})
    assert f.read(100) == content[:100]
    cluster.bs = 2 * BS                                # stop; start --block-size 2x
    f.seek(BS + 500)
    assert f.read(100) == content[BS + 500:BS + 600]
    f.seek(BS // 2)
    assert f.read(10) == content[BS // 2:BS // 2 + 10]
