"""A worker's part of `load` jobs: fetch the blocks the master planned for this worker,
a bounded number at once, through the same single-flight fill as reads (so a block a
reader is fetching is not fetched twice), each counted done once it is in its tier.

Runs on the data server's event loop; Ray calls (other threads) start, feed, read and
cancel jobs through `call_soon`. A cancelled job stops taking new blocks; fills already
started finish (a block is written whole or not at all), so the cache stays consistent.
"""
from __future__ import annotations

import asyncio
import logging

from .. import blocks
from ..wire import BlockRead

log = logging.getLogger(__name__)
_KEEP = 32               # finished jobs remembered for their progress


class Job:
    def __init__(self, job: str, ns: str, dataset: str, concurrency: int) -> None:
        self.job, self.ns, self.dataset = job, ns, dataset
        self.concurrency = max(1, concurrency)
        self.state = "waiting"          # waiting for items, running, done, cancelled
        self.items: list[list] = []
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
    def __init__(self, worker) -> None:
        self.w = worker
        self.jobs: dict[str, Job] = {}

    def start(self, job: str, ns: str, dataset: str, concurrency: int) -> None:
        self.jobs[job] = Job(job, ns, dataset, concurrency)
        for old in [j for j, v in self.jobs.items() if v.state not in ("waiting", "running")
                    ][:-_KEEP]:
            del self.jobs[old]

    def feed(self, job: str, items: list[list]) -> None:
        """The job's items ([file no, path, version, size, index, fid]); starts it."""
        j = self.jobs[job]
        if j.state != "waiting":
            return
        j.items = items
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
            j.seq = self.w.report_after()

    async def _run(self, j: Job) -> None:
        todo = iter(j.items)

        async def one_by_one() -> None:
            for item in todo:
                await self._one(j, item)

        try:
            await asyncio.gather(*(one_by_one() for _ in range(j.concurrency)))
            j.state = "done"
        except asyncio.CancelledError:
            j.state = "cancelled"
        finally:
            j.seq = self.w.report_after()        # what it cached is in the next report

    async def _one(self, j: Job, item: list) -> None:
        no, path, version, size, index, fid = item
        r = BlockRead(j.dataset, path, version, size, index, 0, -1)
        try:
            data = await self.w.block(j.ns, r, fid, read=False)
            key = blocks.block_key(fid, index, self.w.config.block_size)
            fill = self.w.fill_of(key)
            if fill is not None:
                await asyncio.shield(fill)      # done = in its tier, not just fetched
            if key not in self.w.store:
                raise RuntimeError("fetched but not cached: no room in any tier")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - counted and reported; the job goes on
            j.failed += 1
            if len(j.errors) < 5:
                j.errors.append(f"{j.dataset}/{path}: {exc}")
            return
        j.done_blocks += 1
        j.done_bytes += len(data)
        j.by_file[no] = j.by_file.get(no, 0) + 1
