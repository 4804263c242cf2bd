"""The substituting sampler: every epoch a permutation, ordered so the cache is used
while the misses are fetched (import it from `fluidcache.integrations.torch`).

    sampler = SubstitutingSampler(ds, window=512, seed=0)     # DDP: num_replicas, rank
    loader = DataLoader(ds, batch_size=64, sampler=sampler, num_workers=8)
    for epoch in range(n):
        sampler.set_epoch(epoch)
        for batch in loader: ...

When the dataset is larger than the cache, a plain random order stalls a DataLoader
worker on the store at every miss. This sampler yields, among the next `window`
samples of the seeded permutation (window.py), the cached ones first, while the
uncached ones are prefetched through the cache in the background (`fs.prefetch`: the
owner fetches and caches the file, or keeps it aside for its next read when its tier
takes nothing more) and yielded once they have landed; a sample is never more than
`window - 1` places from its place in the permutation. What is cached comes from the
master's block reports at the start of each epoch (`refresh()`, one paged `locate`)
and from what this sampler saw land since.

It runs where the DataLoader iterates it (the main process), with `prefetch` threads
there; the DataLoader's workers (fork or spawn) read as always. Memory: the window's
samples, a few sets of indices.
"""
from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .window import Window


class SubstitutingSampler:
    def __init__(self, dataset, window: int = 512, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, drop_last: bool = False, prefetch: int = 32,
                 max_wait: float = 0.5) -> None:
        """`dataset`: a FluidDataset (its `paths` and `fs`); `window`: samples the order
        may be chosen among; `prefetch`: files fetched at once; `max_wait`: seconds the
        sampler waits for a sample of the window to land before it hands the window's
        head to the DataLoader anyway (its reader then waits on the store)."""
        from .torch import _dist
        dist = _dist()
        self.num_replicas = num_replicas if num_replicas is not None else \
            (dist.get_world_size() if dist else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if dist else 0)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is not in [0, {self.num_replicas})")
        if window < 1 or prefetch < 1:
            raise ValueError("window and prefetch must be at least 1")
        self.dataset, self.window, self.seed = dataset, window, seed
        self.shuffle, self.drop_last, self.prefetch = shuffle, drop_last, prefetch
        self.max_wait = max_wait
        self.epoch = 0
        n = len(dataset)
        self.per_rank = n // self.num_replicas if drop_last else -(-n // self.num_replicas)
        self.cached: set[int] = set()
        self.stats: dict[str, float] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def order(self) -> list[int]:
        """This rank's samples this epoch in the seeded permutation's order (as torch's
        DistributedSampler splits it: every `num_replicas`-th from `rank`)."""
        n = len(self.dataset)
        order = list(range(n))
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(order)
        total = self.per_rank * self.num_replicas
        order = order[:total] if total <= n else (order * (-(-total // n)))[:total]
        return order[self.rank::self.num_replicas]

    def refresh(self) -> set[int]:
        """The samples whose files are wholly cached now, from the block reports: the
        cached bytes of every file of each dataset the samples are in, asked of the
        master a page at a time (`du` per file), against the files' listed sizes."""
        fs = self.dataset.fs
        by_ds: dict[str, dict[str, int]] = {}
        for p in self.dataset.paths:
            ds, _, _ = p.partition("/")
            if ds not in by_ds:
                by_ds[ds] = _cached_by_file(fs, ds)
        cached = set()
        for i, p in enumerate(self.dataset.paths):
            ds, _, rel = p.partition("/")
            got = by_ds[ds].get(rel, 0)
            if got and got >= fs.info(p)["size"]:
                cached.add(i)
        self.cached = cached
        return cached

    def __iter__(self):
        cached = self.refresh()
        landed: set[int] = set()
        started: set[int] = set()
        cv = threading.Condition()
        fs = self.dataset.fs
        stats = self.stats = {"samples": 0, "ready": 0, "waited_s": 0.0, "forced": 0,
                              "prefetched": 0, "prefetch_failed": 0}

        failed: set[int] = set()

        def fetch(i: int) -> None:
            try:
                ok = fs.prefetch(self.dataset.paths[i])
            except Exception:  # noqa: BLE001 - a hint: the reader reports what is wrong
                ok = False
            with cv:
                (landed if ok else failed).add(i)   # (failed: not worth waiting for)
                stats["prefetched" if ok else "prefetch_failed"] += 1
                started.discard(i)
                cv.notify_all()

        pool = ThreadPoolExecutor(self.prefetch, thread_name_prefix="fc-substitute")
        win = Window(self.order(), self.window)
        try:
            while len(win):
                for i in win.fill():
                    if i not in cached and i not in started and i not in landed \
                            and i not in failed:
                        started.add(i)
                        pool.submit(fetch, i)
                with cv:
                    def ready(i: int) -> bool:
                        return i in cached or i in landed

                    def worth(i: int) -> bool:   # ready, or never will be: no wait
                        return i in cached or i in landed or i in failed
                    got = win.take(worth)
                    if got is None:       # nothing ready: wait for a landing, a while
                        t0 = time.monotonic()
                        deadline = t0 + self.max_wait
                        while got is None and time.monotonic() < deadline:
                            cv.wait(deadline - time.monotonic())
                            got = win.take(worth)
                        stats["waited_s"] += time.monotonic() - t0
                        if got is None:
                            got = win.take_head()
                            stats["forced"] += 1
                    was_ready = ready(got)
                    landed.discard(got)
                    failed.discard(got)
                stats["samples"] += 1
                stats["ready"] += was_ready
                yield got
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def effective_hit_ratio(self) -> float:
        """Of the last epoch's samples (so far), the share yielded cached or landed."""
        return self.stats.get("ready", 0) / max(1, self.stats.get("samples", 0))


def _cached_by_file(fs, dataset: str) -> dict[str, int]:
    """{path in the dataset: cached bytes} of all its files, in pages."""
    out: dict[str, int] = {}
    after = None
    while True:
        page = fs.client.cluster.master("du", {"ds": dataset, "p": "", "per_file": True,
                                               "after": after})
        out.update(page["cached_by_file"])
        after = page["next"]
        if after is None:
            return out
