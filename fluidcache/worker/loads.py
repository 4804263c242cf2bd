"""A worker's part of `load` jobs: fetch the blocks the master planned for this worker,
a bounded number at once, through the same single-flight fill as reads (so a block a
reader is fetching is not fetched twice), each counted done once it is in its tier.

Runs on the data server's event loop; Ray calls (other threads) start, feed, read and
cancel jobs through `Worker.on_loop`. A cancelled job stops taking new blocks; fills
already started finish (a block is written whole or not at all), so the cache stays
consistent. At most `jobs_kept` finished jobs are remembered for their progress.
Owns: the jobs and their progress. Never: fetch or cache a block itself (the read path's
`BlockSource.fill` does), or see more of the worker than that source and `report_after`.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import NamedTuple, Protocol

from .. import blocks
from ..wire import BlockRead

log = logging.getLogger(__name__)


class LoadItem(NamedTuple):
    """One block the master planned for this worker (sent as a list)."""

    no: int              # the file's number in the job (progress is counted per file)
    path: str
    version: str
    size: int
    index: int           # the block's index in the file
    fid: str             # the file id, as the master listed it


class BlockSource(Protocol):
    """What loads need of the read path."""

    block_size: int

    async def fill(self, ns: str, r: BlockRead) -> bytes | memoryview:
        """The block's bytes, once its fetch and tier write are over (single flight with
        reads; not counted as a read)."""

    def is_cached(self, key: str) -> bool:
        """Is the block held in a tier?"""


class Job:
    def __init__(self, job: str, ns: str, dataset: str, concurrency: int) -> None:
        self.job, self.ns, self.dataset = job, ns, dataset
        self.concurrency = max(1, concurrency)
        self.state = "waiting"          # waiting for items, running, done, cancelled
        self.items: list[list] = []     # LoadItem fields, as the master sent them
        self.done_blocks = self.done_bytes = self.failed = 0
        self.errors: list[str] = []
        self.by_file: dict[int, int] = {}
        self.seq = 0                    # the report that carries all this job cached
        self.task: asyncio.Task | None = None

    def progress(self) -> dict:
        return {"state": self.state, "blocks": len(self.items),
                "done_blocks": self.done_blocks, "done_bytes": self.done_bytes,
                "failed": self.failed, "errors": list(self.errors),
                "by_file": dict(self.by_file), "seq": self.seq}


class Loads:
    def __init__(self, source: BlockSource, report_after: Callable[[], int],
                 jobs_kept: int) -> None:
        """`report_after()`: the number of the block report that carries every change
        made so far (a job's `seq`: the master waits for it before it counts the job)."""
        self._source, self._report_after, self._kept = source, report_after, jobs_kept
        self.jobs: dict[str, Job] = {}

    def start(self, job: str, ns: str, dataset: str, concurrency: int) -> None:
        self.jobs[job] = Job(job, ns, dataset, concurrency)
        for old in [j for j, v in self.jobs.items() if v.state not in ("waiting", "running")
                    ][:-self._kept]:
            del self.jobs[old]

    def feed(self, job: str, items: list[list]) -> None:
        """The job's items (LoadItem fields, as lists); starts it."""
        j = self.jobs[job]
        if j.state != "waiting":
            return
        j.items = items    # made LoadItems one at a time as they run: feed is on the loop
        j.state = "running"
        j.task = asyncio.get_running_loop().create_task(self._run(j))

    def cancel(self, job: str) -> None:
        j = self.jobs.get(job)
        if j is None or j.state not in ("waiting", "running"):
            return
        if j.task is not None:
            j.task.cancel()
        else:
            j.state = "cancelled"
            j.seq = self._report_after()

    async def _run(self, j: Job) -> None:
        todo = (LoadItem(*item) for item in j.items)

        async def one_by_one() -> None:
            for item in todo:
                await self._one(j, item)

        try:
            await asyncio.gather(*(one_by_one() for _ in range(j.concurrency)))
            j.state = "done"
        except asyncio.CancelledError:
            j.state = "cancelled"
        finally:
            j.seq = self._report_after()         # what it cached is in the next report

    async def _one(self, j: Job, item: LoadItem) -> None:
        r = BlockRead(j.dataset, item.path, item.version, item.size, item.index, fid=item.fid)
        try:
            data = await self._source.fill(j.ns, r)
            key = blocks.block_key(item.fid, item.index, self._source.block_size)
            if not self._source.is_cached(key):
                raise RuntimeError("fetched but not cached: no room in any tier")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - counted and reported; the job goes on
            j.failed += 1
            if len(j.errors) < 5:
                j.errors.append(f"{j.dataset}/{item.path}: {exc}")
            return
        j.done_blocks += 1
        j.done_bytes += len(data)
        j.by_file[item.no] = j.by_file.get(item.no, 0) + 1
