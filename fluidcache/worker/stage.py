"""The stage: prefetched blocks no tier took (a full fill-once tier), kept until read.

A hint ahead of a reader still lands: the reader's read takes the block from here. At
most `limit` bytes in all, counting each block's bytes and a fixed cost per entry; a
tenant namespace (not `default`) at most half. Beyond, the namespace's own oldest go
first, then anyone's oldest. Nothing empty is kept. Blocks go when read (`take`), when
freed (`drop`), or with their dataset (`drop_owner`).
Pure: no I/O, no clocks; used from the data server's loop only.
"""
from __future__ import annotations

import collections

ENTRY_COST = 512         # bytes a staged block counts beyond its data (its entry)


class Stage:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._blocks: collections.OrderedDict[str, tuple[str, bytes]] = \
            collections.OrderedDict()                  # key -> ("ns/name", bytes)
        self._bytes: dict[str, int] = {}               # namespace -> bytes (+ cost)

    def __contains__(self, key: str) -> bool:
        return key in self._blocks

    def peek(self, key: str) -> bytes | None:
        held = self._blocks.get(key)
        return None if held is None else held[1]

    def take(self, key: str) -> bytes | None:
        """A staged block for its reader (it leaves the stage)."""
        data = self.peek(key)
        if data is not None:
            self._drop(key)
        return data

    def put(self, key: str, dsid: str, data) -> None:
        ns = dsid.partition("/")[0]
        share = self.limit if ns == "default" else self.limit // 2
        cost = len(data) + ENTRY_COST
        if not len(data) or cost > share or key in self._blocks:
            return
        while self._bytes.get(ns, 0) + cost > share:
            self._drop(next(k for k, (o, _) in self._blocks.items()
                            if o.partition("/")[0] == ns))
        while sum(self._bytes.values()) + cost > self.limit:
            self._drop(next(iter(self._blocks)))
        self._blocks[key] = (dsid, bytes(data))
        self._bytes[ns] = self._bytes.get(ns, 0) + cost

    def drop(self, keys) -> None:
        """These keys go (freed: a freed version is never served from here)."""
        for k in [k for k in keys if k in self._blocks]:
            self._drop(k)

    def drop_owner(self, owner: str) -> None:
        """A removed dataset's ("ns/name") blocks go."""
        for k in [k for k, (o, _) in self._blocks.items() if o == owner]:
            self._drop(k)

    def _drop(self, key: str) -> None:
        dsid, data = self._blocks.pop(key)
        ns = dsid.partition("/")[0]
        self._bytes[ns] -= len(data) + ENTRY_COST
        if not self._bytes[ns]:
            del self._bytes[ns]
