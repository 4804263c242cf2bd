"""What a worker tells the master, and the rules it gets back.

Owns: the block-event listener of the store (which dataset each held block is of:
`owners`), the block reports (what was added and removed since the last one, or a full
one when the master asks or a heartbeat failed), their sequence numbers, the heartbeat
thread that sends them every `interval` seconds (at once after `report_after`), and the
master's pins and TTLs applied to the store (`apply_rules`).
Never: speak to the master other than through the injected blocking callables `send(report)
-> reply` (the heartbeat) and `ask_rules() -> rules`; touch the read path.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Reports:
    def __init__(self, store, send: Callable[[dict], dict], ask_rules: Callable[[], dict],
                 per_dataset: Callable[[], dict], after_beat: Callable[[dict], None],
                 interval: float) -> None:
        """`store`: the BlockStore (its listener is set here); `per_dataset()`: the
        {"ns/name": [hits, misses]} each heartbeat carries; `after_beat(reply)`: called
        with each heartbeat's reply (metrics, the cluster map version)."""
        self.store, self._send, self._ask_rules = store, send, ask_rules
        self._per_dataset, self._after_beat, self._interval = per_dataset, after_beat, interval
        self.owners: dict[str, str] = {}        # block key -> "ns/name"
        self._lock = threading.Lock()
        self._seq = 0                           # reports sent, numbered
        self._adds: dict[str, list] = {}
        self._removes: set[str] = set()
        self._resync = True                     # the first report is a full one
        self._rules_version = -1
        self._pinned: set[str] = set()          # keys pinned by the master's rules
        self._ttl_keys: set[str] = set()
        self._beat_now = threading.Event()
        self._stopping = threading.Event()
        store.listener = self._on_block

    def start(self) -> "Reports":
        """Send the first (full) report now, then one every interval in a thread."""
        self._beat()
        threading.Thread(target=self._heartbeats, daemon=True, name="fluidcache-hb").start()
        return self

    def stop(self) -> None:
        self._stopping.set()

    def report_after(self) -> int:
        """The number of the next report (it carries every change made so far); it is
        sent at once."""
        with self._lock:
            seq = self._seq + 1
        self._beat_now.set()
        return seq

    def _heartbeats(self) -> None:
        """Tell the master we are alive, every interval, with what our blocks did since.
        A restarted master learns of this worker, and all it holds, this way."""
        while True:
            self._beat_now.wait(self._interval)
            self._beat_now.clear()
            if self._stopping.is_set():
                return
            try:
                self._beat()
            except Exception as exc:  # noqa: BLE001 - the master may be restarting
                log.warning("heartbeat to the master failed: %s", exc)
                self._resync = True

    def _beat(self) -> None:
        report = self._take_report()
        report["by_dataset"] = self._per_dataset()
        reply = self._send(report)
        self._after_beat(reply)
        if reply.get("resync"):
            self._resync = True
        if reply.get("rules", self._rules_version) != self._rules_version:
            self.apply_rules(self._ask_rules())

    def apply_rules(self, rules: dict) -> None:
        """The master's pins and TTLs, as block keys (also for blocks not held yet)."""
        pins = set(rules["pin"])
        for key in self._pinned - pins:
            self.store.pin(key, False)
        for key in pins - self._pinned:
            self.store.pin(key, True)
        now, ttls = time.time(), dict(rules["ttl"])
        for key in self._ttl_keys - set(ttls):
            self.store.set_ttl(key, None)
        for key, deadline in ttls.items():
            self.store.set_ttl(key, max(0.0, deadline - now))
        self._pinned, self._ttl_keys = pins, set(ttls)
        self._rules_version = rules["version"]

    def _on_block(self, event: str, key: str, meta, size: int) -> None:
        if event == "add" and meta is not None:
            self.owners[key] = meta.owner
        elif event != "add":
            self.owners.pop(key, None)
        with self._lock:
            if event == "add":
                self._removes.discard(key)
                self._adds[key] = [key, meta.owner, meta.fid, meta.index, size]
            else:
                self._adds.pop(key, None)
                self._removes.add(key)

    def _take_report(self) -> dict:
        with self._lock:
            full, self._resync = self._resync, False
            adds, removes = self._adds, self._removes
            self._adds, self._removes = {}, set()
            self._seq += 1
            seq = self._seq
        if not full:
            return {"add": list(adds.values()), "remove": sorted(removes), "seq": seq}
        held = []
        for key in self.store.keys():
            d = self.store.describe(key)
            if d is not None:
                self.owners[key] = d.meta.owner
                held.append([key, d.meta.owner, d.meta.fid, d.meta.index, d.size])
        return {"full": True, "add": held, "seq": seq}
