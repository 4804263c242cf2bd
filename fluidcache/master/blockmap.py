"""Which worker holds what: the master's view of the block reports.

Workers report blocks they add and remove (in batches, with their heartbeats), or all
they hold (a full report, after either side restarts). From that the master answers,
with no worker call: how many bytes of a dataset are cached and on which nodes (`status`,
`du`), and which node holds most of a file (scheduling hints).
Memory per block is kept small: a 16-byte key and one int (file slot and size) per
holder; a file's owner and id are stored once, however many blocks it has.
Pure: no Ray, no clocks. Sizes count every copy (a block on two workers counts twice).
Thread-safe on its own (one short lock per call): heartbeats that apply reports never
wait on the master's lock, nor on a long planning walk that asks for holders.
"""
from __future__ import annotations

import functools
import threading
from typing import NamedTuple

_SIZE_BITS = 40


def _locked(fn):
    @functools.wraps(fn)
    def call(self, *args, **kwargs):
        with self._lock:
            return fn(self, *args, **kwargs)
    return call


class FileSlot(NamedTuple):
    owner: str             # "namespace/dataset"
    fid: str


class BlockMap:
    def __init__(self) -> None:
        self._lock = threading.RLock()   # apply() of a full report drops the worker first
        self._slots: dict[tuple[str, str], int] = {}       # (owner, fid) -> slot
        self._files: list[FileSlot] = []                   # slot -> (owner, fid)
        self._held: dict[str, dict[bytes, int]] = {}       # worker -> key -> slot|size
        self._by_owner: dict[str, dict[str, int]] = {}     # owner -> worker -> bytes
        self._by_file: dict[int, dict[str, int]] = {}      # slot -> worker -> bytes

    @_locked
    def known(self, worker: str) -> bool:
        return worker in self._held

    @_locked
    def apply(self, worker: str, report: dict) -> None:
        """`report`: {"full": bool, "add": [[key, owner, fid, index, size]], "remove": [key]}."""
        if report.get("full"):
            self.drop_worker(worker)
        held = self._held.setdefault(worker, {})
        for key in report.get("remove", ()):
            self._remove(worker, held, bytes.fromhex(key))
        for key, owner, fid, _index, size in report.get("add", ()):
            k = bytes.fromhex(key)
            if k in held:
                self._remove(worker, held, k)
            slot = self._slots.get((owner, fid))
            if slot is None:
                slot = self._slots[(owner, fid)] = len(self._files)
                self._files.append(FileSlot(owner, fid))
            held[k] = (slot << _SIZE_BITS) | size
            self._count(worker, slot, owner, size)

    def _remove(self, worker: str, held: dict, k: bytes) -> None:
        packed = held.pop(k, None)
        if packed is not None:
            slot, size = packed >> _SIZE_BITS, packed & ((1 << _SIZE_BITS) - 1)
            self._count(worker, slot, self._files[slot].owner, -size)

    def _count(self, worker: str, slot: int, owner: str, size: int) -> None:
        for table, key in ((self._by_owner, owner), (self._by_file, slot)):
            per = table.setdefault(key, {})
            per[worker] = per.get(worker, 0) + size
            if per[worker] == 0:
                del per[worker]
                if not per:
                    del table[key]

    @_locked
    def drop_worker(self, worker: str) -> None:
        held = self._held.pop(worker, None) or {}
        for k in list(held):
            self._remove(worker, held, k)

    @_locked
    def drop_owner(self, owner: str) -> None:
        """Forget a removed dataset's blocks (its workers free them on their own)."""
        for worker, held in self._held.items():
            for k, packed in list(held.items()):
                if self._files[packed >> _SIZE_BITS].owner == owner:
                    self._remove(worker, held, k)

    # -- queries ---------------------------------------------------------------
    @_locked
    def cached_bytes(self, owner: str) -> int:
        return sum(self._by_owner.get(owner, {}).values())

    @_locked
    def by_worker(self, owner: str) -> dict[str, int]:
        return dict(self._by_owner.get(owner, {}))

    @_locked
    def file_by_worker(self, owner: str, fid: str) -> dict[str, int]:
        slot = self._slots.get((owner, fid))
        return {} if slot is None else dict(self._by_file.get(slot, {}))

    @_locked
    def blocks(self, worker: str) -> int:
        return len(self._held.get(worker, {}))

    @_locked
    def holders(self, key: str) -> list[str]:
        """The workers that hold block `key` (hex)."""
        k = bytes.fromhex(key)
        return [w for w, held in self._held.items() if k in held]

    @_locked
    def total_bytes(self) -> int:
        """Bytes cached over all datasets and workers (every copy)."""
        return sum(sum(per.values()) for per in self._by_owner.values())

    def holdings(self) -> list[tuple[str, str, int, tuple[str, ...]]]:
        """Every block held: (key hex, owner, size, its holders). The lock is taken for
        one worker's copy at a time, never for the whole walk (heartbeats go on); the
        file table is only ever appended to, so its slots stay valid after."""
        rows: dict[bytes, list] = {}
        mask = (1 << _SIZE_BITS) - 1
        with self._lock:
            workers, files = list(self._held), self._files
        for worker in workers:
            with self._lock:
                items = list(self._held.get(worker, {}).items())
            for k, packed in items:
                row = rows.get(k)
                if row is None:
                    rows[k] = [packed >> _SIZE_BITS, packed & mask, [worker]]
                else:
                    row[2].append(worker)
        return [(k.hex(), files[slot].owner, size, tuple(ws))
                for k, (slot, size, ws) in rows.items()]

    @_locked
    def owner_of(self, key: str) -> str | None:
        """The dataset ("namespace/name") of a held block (None: nobody holds it)."""
        k = bytes.fromhex(key)
        for held in self._held.values():
            packed = held.get(k)
            if packed is not None:
                return self._files[packed >> _SIZE_BITS].owner
        return None

    @_locked
    def keys_of_owner(self, owner: str) -> dict[str, list[str]]:
        """worker -> the keys (hex) it holds of dataset `owner`."""
        out: dict[str, list[str]] = {}
        for worker, held in self._held.items():
            keys = [k.hex() for k, packed in held.items()
                    if self._files[packed >> _SIZE_BITS].owner == owner]
            if keys:
                out[worker] = keys
        return out
