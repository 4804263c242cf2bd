"""Blocks from one worker to another: what makes scaling keep the cache.

Owns: serving a cached block to a peer (`peer`, on the data server, for the cluster's
workers only: they show the worker secret), pulling a block from a peer (checked: the
key must be the one its file id and index make, and the bytes must match the holder's
checksum), the master's move orders (`move_in`: pull each block from its holder, at
most `rebalance_rate` bytes/s, and cache it), and a miss while blocks move (`fetch`:
ask the master who holds the block and read it from them, before the store).
Never: fetch from the under store (a peer that does not hold a block says so), or let
a namespace's token open this door.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from typing import Callable

import xxhash

from .. import blocks
from ..client.conn import Pool
from ..config import Config
from ..errors import AccessDenied, FluidError, InvalidRequest, NotFound
from ..tiering import layout

log = logging.getLogger(__name__)
_KEY_CHARS = frozenset("0123456789abcdef")
_PULL_TIMEOUT = 60.0       # a move's pull (in the background)
_READ_PULL_TIMEOUT = 5.0   # a reader's miss, from a holder


def check_key(key) -> str:
    if not isinstance(key, str) or len(key) != 32 or not set(key) <= _KEY_CHARS:
        raise InvalidRequest("a block key is 32 hex digits")
    return key


class Peers:
    def __init__(self, config: Config, store, address: Callable[[], str],
                 ask_holders: Callable[[str], list], report_after: Callable[[], int]) -> None:
        """`address()`: this worker's data-server address (never asked of itself);
        `ask_holders(key)`: the master's answer of who holds a block (addresses);
        `report_after()`: send the block reports now."""
        self.config, self.store, self._address = config, store, address
        self._ask_holders, self._report_after = ask_holders, report_after
        self._secret = config.worker_secret
        self._pool = Pool(5.0, _PULL_TIMEOUT, max_idle=4, max_data=config.max_data)
        # a reader waits on this one: a holder that hangs costs seconds, not a minute
        self._quick = Pool(2.0, _READ_PULL_TIMEOUT, max_idle=4, max_data=config.max_data)
        self._until = 0.0                      # monotonic: look at peers on a miss until
        self._rate_lock = threading.Lock()
        self._next_free = time.monotonic()     # the rate limit's clock
        self.counters = dict(peer_fetches=0, peer_bytes=0, peer_served=0, moved_in=0,
                             moved_in_bytes=0, move_failures=0)

    # -- whether blocks are moving -----------------------------------------------------
    def moving_for(self, seconds: float) -> None:
        self._until = max(self._until, time.monotonic() + max(0.0, float(seconds)))

    def saw(self, moving: bool, heartbeat: float) -> None:
        """The master's word with a heartbeat: blocks move (for the next few beats)."""
        if moving:
            self.moving_for(3 * heartbeat)

    def active(self) -> bool:
        return time.monotonic() < self._until

    # -- the holder's side (on the data server's loop) ---------------------------------
    async def serve(self, req) -> tuple[dict, object]:
        """A peer's `peer` request: a block we hold, with what it is and its checksum
        (NotFound if not held: a peer never makes us fetch)."""
        if not isinstance(req.token, str) or not self._secret or \
                not hmac.compare_digest(req.token.encode(), self._secret.encode()):
            raise AccessDenied("peer reads are for the cluster's workers only")
        key = check_key(req.args.get("key"))
        if self.store.in_memory(key):         # tmpfs: cheaper than a hop
            about, data = self._read_held(key)
        else:                                 # a disk may stall: never on the loop
            about, data = await asyncio.get_running_loop().run_in_executor(
                None, self._read_held, key)
        if about is None:
            raise NotFound(f"block {key} is not held here")
        self.counters["peer_served"] += 1
        return {"n": len(data), "owner": about.meta.owner, "fid": about.meta.fid,
                "index": about.meta.index, "h": xxhash.xxh3_64_intdigest(data)}, data

    def _read_held(self, key: str):
        """(what a held block is, its verified bytes), or (None, None)."""
        about = self.store.describe(key)
        if about is None:
            return None, None
        data = self.store.get(key, (about.meta.fid, about.meta.index))
        return (about, data) if data is not None else (None, None)

    # -- the puller's side (threads) ---------------------------------------------------
    def pull(self, address: str, key: str, expect: tuple[str, int] | None = None,
             quick: bool = False) -> tuple[layout.Meta, bytes]:
        """A block from the peer at `address`, checked: its key is the one its file id
        and index make (and `expect`, when given), and its bytes match the checksum.
        `quick`: a reader waits (short timeouts)."""
        pool = self._quick if quick else self._pool
        result, data = pool.call(address, "peer", {"key": key}, token=self._secret)
        if not isinstance(result, dict):
            raise InvalidRequest(f"{address}: a malformed peer reply")
        owner, fid, index = result.get("owner"), result.get("fid"), result.get("index")
        if not isinstance(owner, str) or not isinstance(fid, str) or \
                not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise InvalidRequest(f"{address}: a peer reply that does not say what it is")
        if blocks.block_key(fid, index, self.config.block_size) != key or \
                (expect is not None and expect != (fid, index)):
            raise InvalidRequest(f"{address}: block {key} is not what was asked for")
        data = bytes(data)
        if len(data) != result.get("n") or xxhash.xxh3_64_intdigest(data) != result.get("h"):
            raise InvalidRequest(f"{address}: block {key} arrived damaged")
        return layout.Meta(owner, fid, index), data

    def fetch(self, key: str, fid: str, index: int) -> tuple[bytes | None, bool]:
        """A missed block from a worker that holds it: (its bytes, whether this worker
        owns it and caches it); (None, True) when nobody holds it or none answered.
        While blocks move, a read goes to its previous holder, not the store."""
        try:
            got = self._ask_holders(key)
            holders = [a for a in got["addresses"] if a != self._address()]
        except Exception as exc:  # noqa: BLE001 - the master busy: the store it is
            log.debug("holders of %s: %s", key, exc)
            return None, True
        for address in holders:
            try:
                _, data = self.pull(address, key, (fid, index), quick=True)
            except FluidError as exc:
                log.debug("block %s from %s: %s", key, address, exc)
                continue
            self.counters["peer_fetches"] += 1
            self.counters["peer_bytes"] += len(data)
            return data, bool(got.get("cache", True))
        return None, True

    def move_in(self, items: list, budget: float = 3600.0) -> dict:
        """The master's move order: [[key, holder address]]. Each block is pulled and
        cached here (its new owner), at most `rebalance_rate` bytes/s, for at most
        `budget` seconds (the rest fail: the master gave up on them then). Returns the
        keys moved (`done`), already held (`had`) and not moved (`failed`)."""
        done, had, failed = [], [], []
        stop_at = time.monotonic() + max(0.0, float(budget))
        for item in items[:self.config.rebalance_batch]:
            if time.monotonic() > stop_at:
                failed.append(item[0] if item else "")
                continue
            try:
                key, address = check_key(item[0]), str(item[1])
            except (InvalidRequest, IndexError, TypeError):
                continue
            if key in self.store:
                had.append(key)
                continue
            try:
                meta, data = self.pull(address, key)
                self._pace(len(data))
                if not self.store.put(key, data, meta):
                    raise InvalidRequest("no tier took it")
            except FluidError as exc:
                log.info("moving block %s from %s: %s", key, address, exc)
                self.counters["move_failures"] += 1
                failed.append(key)
                continue
            self.counters["moved_in"] += 1
            self.counters["moved_in_bytes"] += len(data)
            done.append(key)
        if done:
            self._report_after()       # the master sees them at once
        return {"done": done, "had": had, "failed": failed}

    def _pace(self, nbytes: int) -> None:
        """The rate limit: this many bytes may go once the clock allows them."""
        with self._rate_lock:
            now = time.monotonic()
            start = max(now, self._next_free)
            self._next_free = start + nbytes / self.config.rebalance_rate
        if start > now:
            time.sleep(start - now)     # a rate limit: the wait is the point

    def close(self) -> None:
        self._pool.close()
        self._quick.close()
