"""The master's rebalance: cached blocks follow their owners when workers come and go.

Owns: noticing a change of membership (a worker joined, was lost, or drains), planning
the moves (moves.py) from the block reports, ordering each destination worker to pull
its blocks from their holders (`move_in`, a batch at a time per worker, rate-limited by
the worker, off the read path), freeing the copies no owner needs once moved, retiring
a drained worker once nothing moves from it, the `drain` op, the `rebalance` part of
`status`, and whether workers should ask for a block's holders on a miss (`moving`):
until a block has moved, a read of it goes to its previous holder, never to the store.
Never: move bytes itself (workers pull from each other), or hold the master's lock
while it calls a worker.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable

import ray

from .. import placement
from ..config import Config
from ..errors import AccessDenied, InvalidRequest
from .blockmap import BlockMap
from .core import MasterCore
from .membership import Membership
from .moves import DatasetPlace, Holding, Move, eligible, plan, surplus

log = logging.getLogger(__name__)
_WAIT = 0.5             # seconds the thread waits for a batch before it looks again
_RETIRE_WAIT = 30.0     # seconds a retiring worker has to stop
_BATCH_SLACK = 90.0     # seconds a move order may take beyond its bytes at the rate


class Rebalance:
    def __init__(self, core: MasterCore, lock: threading.RLock, blocks: BlockMap,
                 members: Membership, config: Config,
                 kept: Callable[[str], dict] = lambda wid: {}) -> None:
        """`kept(worker id)`: the kept files only that worker has (pending.py); a
        draining worker is not retired while it has any."""
        self.core, self._lock, self.blocks, self.members = core, lock, blocks, members
        self.config, self._kept = config, kept
        self.enabled = config.rebalance
        self._queues: dict[str, collections.deque[Move]] = {}   # dest -> moves to order
        # dest -> (ref, moves, deadline): one move order in flight per worker
        self._inflight: dict[str, tuple[object, list[Move], float]] = {}
        self._left: dict[str, list] = {}         # key -> [moves not done, dests done]
        self.moved_blocks = self.bytes_moved = self.failed_blocks = 0
        self._changes = self._planned = 0        # changes seen / planned for
        self._quiet_at = 0.0                     # monotonic: `moving` ends then
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._state = threading.Lock()           # the queues and counters
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()
        self._retiring: set[str] = set()          # retire threads started (never twice)
        self._abandoned: dict[str, object] = {}   # dest -> a late order maybe still running
        members.on_change, members.moving = self.changed, self.moving

    # -- what the others see -----------------------------------------------------------
    def changed(self, what: str, wid: str) -> None:
        """Membership changed (`what`: join, lost, drain): plan again, soon."""
        log.info("membership: %s %s; rebalancing", what, wid)
        with self._state:
            self._changes += 1
            self._quiet_at = time.monotonic() + self.config.rebalance_grace
        self._wake.set()
        self.start()

    @property
    def _dirty(self) -> bool:
        """A change not planned for yet."""
        return self._planned < self._changes

    def pending(self) -> int:
        with self._state:
            return sum(len(q) for q in self._queues.values()) + \
                sum(len(m) for _, m, _ in self._inflight.values())

    def moving(self) -> bool:
        """Should workers look for a missed block at its holders before the store?"""
        with self._state:
            busy = self._dirty or any(self._queues.values()) or bool(self._inflight)
            return self.enabled and (busy or time.monotonic() < self._quiet_at)

    def status(self) -> dict:
        """`status`'s `rebalance`: {"pending_blocks", "moved_blocks", "bytes_moved",
        "failed_blocks", "enabled", "draining", "retired"}. While a change waits for its
        plan (a few milliseconds), `pending_blocks` is at least 1: it never reads 0
        between a worker joining and its moves being planned."""
        with self._state:
            out = {"pending_blocks": 0, "moved_blocks": self.moved_blocks,
                   "bytes_moved": self.bytes_moved, "failed_blocks": self.failed_blocks,
                   "enabled": self.enabled}
        out["pending_blocks"] = self.pending() + (1 if self._dirty else 0)
        out["draining"] = sorted(self.members.draining)
        out["retired"] = sorted(self.members.retired)
        return out

    def holders(self, key: str, asker: str = "") -> dict:
        """Who holds block `key`: {"addresses": the data servers of its holders
        (draining ones too: they serve their peers until they retire), "cache": is
        `asker` one of its owners (else it serves the block without keeping a copy)}.
        Takes no master lock (dict reads)."""
        if not isinstance(key, str) or not 0 < len(key) <= 64:
            raise InvalidRequest("a block key is a hex string")
        try:
            ids = self.blocks.holders(key)
            owner = self.blocks.owner_of(key)
        except ValueError:
            raise InvalidRequest("a block key is a hex string") from None
        infos = [self.core.workers.get(w) or self.members.draining.get(w) for w in ids]
        ds = None
        if owner is not None:
            ns, _, name = owner.partition("/")
            ds = self.core.datasets.get((ns, name))
        cache = True
        if ds is not None and ds.routing != "local-first":
            place = DatasetPlace(ds.replicas, ds.selector)
            ids_ok = eligible(place, list(self.core.workers.values()))
            cache = asker in placement.owners(key, ids_ok, max(ds.replicas, 1))
        return {"addresses": [i["address"] for i in infos if i is not None], "cache": cache}

    def op_drain(self, ns: str, args: dict) -> dict:
        """Drain a worker (by id, or by host name if one worker has it): it leaves the
        routing at once, its blocks move to their owners, then it is retired. Asked
        again, tells how far it is: {"node", "state" (draining, retired or lost),
        "pending_blocks" (moves from it not done)}."""
        if ns != "default":
            raise AccessDenied("only the default namespace's token may drain a node")
        node = args.get("node")
        if not isinstance(node, str) or not 0 < len(node) <= 255:
            raise InvalidRequest("drain needs a node: a worker id or host name")
        wid, state = self._find(node)
        if state == "routed":
            with self._lock:                 # (one check and drain: two drains at once
                if not [w for w in self.core.workers if w != wid]:   # never empty it)
                    raise InvalidRequest(f"{wid} is the cluster's last worker: its blocks "
                                         "would have nowhere to go (stop the cluster "
                                         "instead)")
                self.members.drain(wid)
            state = "draining"
        out = {"node": wid, "state": state, "pending_blocks": 0}
        if state == "draining":
            out["pending_blocks"] = self._busy().get(wid, 0) + (1 if self._dirty else 0)
            out.update(self._kept(wid))  # kept files only it has: it waits for them
        return out

    def _busy(self) -> dict[str, int]:
        """Moves not done, per worker they come from or go to."""
        n: dict[str, int] = {}
        with self._state:
            moves = [m for q in self._queues.values() for m in q] + \
                [m for _, b, _ in self._inflight.values() for m in b]
        for m in moves:
            n[m.src] = n.get(m.src, 0) + 1
            n[m.dest] = n.get(m.dest, 0) + 1
        return n

    def _find(self, node: str) -> tuple[str, str]:
        """A worker by id or host name, and where it is: routed, draining, retired, lost."""
        with self._lock:
            tables = (("routed", {w: i.get("host") for w, i in self.core.workers.items()}),
                      ("draining", {w: i.get("host") for w, i in self.members.draining.items()}),
                      ("retired", dict(self.members.retired)),
                      ("lost", {w: i.get("host") for w, i in self.members.lost.items()}))
        for state, hosts in tables:
            if node in hosts:
                return node, state
        for state, hosts in tables:
            found = [w for w, h in hosts.items() if h == node]
            if len(found) > 1:
                raise InvalidRequest(f"{len(found)} workers run on host {node!r}: "
                                     "name one by its id")
            if found:
                return found[0], state
        raise InvalidRequest(f"no worker {node!r} (see `fluidcache status`)")

    # -- the thread --------------------------------------------------------------------
    def start(self) -> None:
        with self._starting:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True,
                                                name="fluidcache-rebalance")
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._round()
            except Exception:  # the rebalance must keep running
                log.exception("rebalance round failed")
            busy = bool(self._inflight)
            self._wake.wait(0.05 if busy else 1.0)
            self._wake.clear()

    def _round(self) -> None:
        with self._state:
            changes = self._changes
        if self._planned < changes:
            self._tell_workers()
            if self.enabled:
                self._replan()
            with self._state:
                self._planned = changes     # (a change meanwhile is planned next round)
        self._collect()
        self._expire()
        self._dispatch()
        self._retire_drained()

    def _tell_workers(self) -> None:
        """Every worker looks for missed blocks at their holders from now on (not only
        after its next heartbeat): a client may route by the new map at once."""
        with self._lock:
            ids = list(self.core.workers) + list(self.members.draining)
        if self.enabled:
            self.members.call(ids, "moving", self.config.rebalance_grace, timeout=5)

    def _replan(self) -> None:
        with self._lock:
            workers = list(self.core.cluster_map()["workers"])
            places = self._places()
        holdings = (Holding(*h) for h in self.blocks.holdings())
        moves = plan(holdings, workers, places)
        queues: dict[str, collections.deque[Move]] = {}
        left: dict[str, list] = {}
        for m in moves:
            queues.setdefault(m.dest, collections.deque()).append(m)
            left.setdefault(m.key, [0, set()])[0] += 1
        with self._state:
            for _, batch, _ in self._inflight.values():   # counted until they answer
                for m in batch:
                    left.setdefault(m.key, [0, set()])[0] += 1
            self._queues, self._left = queues, left
            self._quiet_at = time.monotonic() + self.config.rebalance_grace
        if moves:
            log.info("rebalance: %d blocks (%d bytes) to move", len(moves),
                     sum(m.size for m in moves))

    def _places(self) -> dict[str, DatasetPlace]:
        return {f"{d.namespace}/{d.name}": DatasetPlace(d.replicas, d.selector,
                                                        d.routing == "local-first")
                for d in self.core.datasets.values()}

    def _dispatch(self) -> None:
        """Each destination with nothing in flight gets its next batch to pull (moves of
        a dataset removed since are dropped)."""
        for dest, ref in list(self._abandoned.items()):     # still running there?
            if ray.wait([ref], timeout=0)[0]:
                del self._abandoned[dest]
        with self._state:
            ready = [d for d, q in self._queues.items()
                     if q and d not in self._inflight and d not in self._abandoned]
        with self._lock:
            addresses = {w: i["address"] for w, i in
                         {**self.members.draining, **self.core.workers}.items()}
            routed = set(self.core.workers)
            live = set(self._places())
        for dest in ready:
            handle = self.members.handle(dest)
            with self._state:
                q = self._queues.get(dest)
                batch = [q.popleft() for _ in range(min(len(q), self.config.rebalance_batch))]
            ok = [m for m in batch if handle is not None and m.src in addresses
                  and dest in routed and m.owner in live]
            if len(ok) < len(batch):      # the holder, owner or dataset is gone meanwhile
                self._done([m for m in batch if m not in ok], [], failed=True)
            if ok:
                budget = _BATCH_SLACK + sum(m.size for m in ok) / self.config.rebalance_rate
                ref = handle.move_in.remote([[m.key, addresses[m.src]] for m in ok], budget)
                deadline = time.monotonic() + budget + 5     # (it stops itself first)
                with self._state:
                    self._inflight[dest] = (ref, ok, deadline)

    def _collect(self) -> None:
        """Take the answers of the batches that finished."""
        with self._state:
            refs = {ref: dest for dest, (ref, _, _) in self._inflight.items()}
        if not refs:
            return
        ready, rest = ray.wait(list(refs), num_returns=1, timeout=_WAIT)
        if ready and rest:                  # and any others done by now
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        for ref in ready:
            dest = refs[ref]
            with self._state:
                got_batch = self._inflight.pop(dest, None)
            if got_batch is None:
                continue
            batch = got_batch[1]
            try:
                got = ray.get(ref)
                done = set(got.get("done", ())) | set(got.get("had", ()))
                moved = set(got.get("done", ()))
            except Exception as exc:  # noqa: BLE001 - a worker gone: its moves failed
                log.warning("worker %s did not take its moves: %s", dest, exc)
                done = moved = set()
            self._done([m for m in batch if m.key in done], [m.key for m in batch
                                                             if m.key in moved])
            self._done([m for m in batch if m.key not in done], [], failed=True)

    def _expire(self) -> None:
        """A move order past its deadline, or to a worker no longer in the cluster,
        fails (its worker may be hung: it is not waited for)."""
        now = time.monotonic()
        with self._lock:
            alive = set(self.core.workers)
        with self._state:
            late = [d for d, (_, _, t) in self._inflight.items() if t < now or d not in alive]
            gone = [(d, self._inflight.pop(d)) for d in late]
            rest = {d: list(self._queues.pop(d, ())) for d in late}
        for dest, (ref, batch, _) in gone:
            log.warning("move order to %s abandoned (%d blocks, %d more queued): late or "
                        "gone", dest, len(batch), len(rest[dest]))
            self._abandoned[dest] = ref      # nothing more to it while that still runs
            self._done(batch + rest[dest], [], failed=True)

    def _done(self, batch: list[Move], moved: list[str], failed: bool = False) -> None:
        """Moves finished: count them; a key whose moves are all done frees the copies
        no owner needs (never a draining worker's: it retires with them)."""
        moved_set = set(moved)
        finished: list[tuple[Move, set]] = []
        with self._state:
            for m in batch:
                if failed:
                    self.failed_blocks += 1
                elif m.key in moved_set:
                    self.moved_blocks += 1
                    self.bytes_moved += m.size
                row = self._left.setdefault(m.key, [1, set()])
                row[0] -= 1
                if not failed:
                    row[1].add(m.dest)
                if row[0] <= 0:
                    self._left.pop(m.key, None)
                    finished.append((m, row[1]))
            if not any(self._queues.values()) and not self._inflight:
                self._quiet_at = time.monotonic() + self.config.rebalance_grace
        to_free: dict[str, list[str]] = {}
        if finished:
            with self._lock:
                workers = list(self.core.cluster_map()["workers"])
                places = self._places()
                draining = set(self.members.draining)
            for m, dests in finished:    # freed only if, by the workers now, every owner
                place = places.get(m.owner)      # holds it and the holder is not one
                if place is None or not m.free:
                    continue
                holders = set(self.blocks.holders(m.key)) | dests
                for w in surplus(m.key, place, workers, m.copies, holders, m.free):
                    if w not in draining:         # (a draining one retires with it)
                        to_free.setdefault(w, []).append(m.key)
        for w, keys in to_free.items():
            handle = self.members.handle(w)
            if handle is not None:      # not waited for: a copy left behind only costs room
                handle.free.remote(keys, True)

    def _retire_drained(self) -> None:
        """A draining worker that nothing moves from or to, and that has no kept file
        only it holds, retires (in its own thread: stopping it may take a while)."""
        if not self.members.draining:
            return
        if self._dirty:
            return
        busy = self._busy()              # moving from it, or to it
        for wid in list(self.members.draining):
            if wid in busy or wid in self._retiring or any(self._kept(wid).values()):
                continue                 # (its kept files: uploaded first, or kept)
            self._retiring.add(wid)
            threading.Thread(target=self._retire, args=(wid,), daemon=True,
                             name="fluidcache-retire").start()

    def _retire(self, wid: str) -> None:
        try:
            self.members.retire(wid, _RETIRE_WAIT)
        finally:
            self._retiring.discard(wid)
