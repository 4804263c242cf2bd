"""Heartbeats never wait on a long operation: a master planning a load (or measuring a
large `du`) over a slow block map still takes every worker's heartbeat at once, so live
workers are never marked lost. In-process master (no Ray), a local dataset."""
from __future__ import annotations

import threading
import time

from fluidcache.errors import Unavailable
from fluidcache.master.actor import Master
from fluidcache.master.blockmap import BlockMap


class SlowBlockMap(BlockMap):
    """Every `holders` question takes 5 ms (a huge block map)."""

    def holders(self, key: str):
        time.sleep(0.005)          # the slowness under test, not a wait for a condition
        return super().holders(key)


def test_heartbeats_go_on_while_a_load_is_planned(tmp_path):
    for i in range(400):
        (tmp_path / f"f{i:04d}").write_bytes(b"x")
    config = {"tiers": [{"medium": "MEM", "path": str(tmp_path / "mem"), "quota": "1MiB"}],
              "block_size": "64KiB"}
    m = Master(config, blocks=SlowBlockMap())
    try:
        m.ops["dataset_create"]("default", {"name": "d", "mounts": [["/", f"file://{tmp_path}"]]})
        info = {"id": "w1", "node_id": "w1", "address": "127.0.0.1:1", "machine": "m"}
        m.members.heartbeat(info, {"full": True, "add": [], "seq": 1})
        done = threading.Event()

        def plan():
            try:
                m.ops["load"]("default", {"ds": "d", "p": ""})  # ~2 s of holders questions
            except Unavailable:
                pass                                          # no Ray workers to hand it to
            finally:
                done.set()
        threading.Thread(target=plan, daemon=True).start()
        worst, beats = 0.0, 0
        while not done.is_set():
            t0 = time.monotonic()
            m.members.heartbeat(info, {"add": [], "remove": [], "seq": 2 + beats})
            worst = max(worst, time.monotonic() - t0)
            beats += 1
            done.wait(0.05)
        assert beats >= 10 and worst < 0.5, (beats, worst)
    finally:
        m.shutdown()
