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

Under lru and lfu eviction a prefetch would evict a cached sample still to come, so the
sampler also tells the cache what the epoch reads (`fs.hint_reuse`): at its start the
epoch's cached samples are wanted, the first in the order soonest (no block of the same
namespace evicts them before they are read), and each sample is done `reuse_lag`
samples after it was handed out (evicted first). The lag must exceed what the DataLoader
holds ahead of its reads, or a sample may be pushed out before it is read (a miss).

It runs where the DataLoader iterates it (the main process), with at most `prefetch`
prefetches in flight there; the DataLoader's workers (fork or spawn) read as always.
Memory: the cached set (one int per cached sample) and the window's samples. The bound
holds within a rank's share: in the global permutation a sample moves at most
(window - 1) x num_replicas places. When landings lag, an epoch starts with cached
samples and ends with the misses; where the cache holds whole classes (fill-once
filled in path order), batches at the epoch's edges lean to them.
"""
from __future__ import annotations

import collections
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .window import Window

log = logging.getLogger(__name__)


_DONE_BATCH = 64           # samples said to be done in one hint


class SubstitutingSampler:
    def __init__(self, dataset, window: int = 512, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, drop_last: bool = False, prefetch: int = 32,
                 max_wait: float = 0.5, reuse_lag: int | None = None) -> None:
        """`dataset`: a FluidDataset (its `paths` and `fs`); `window`: samples the order
        may be chosen among; `prefetch`: files fetched at once; `max_wait`: seconds the
        sampler waits for a sample of the window to land before it hands the window's
        head to the DataLoader anyway (its reader then waits on the store);
        `reuse_lag`: samples handed out after one before it is said to be done for the
        epoch (evicted first under lru/lfu: default `window`); it must exceed what the
        DataLoader holds ahead of its reads (num_workers x prefetch_factor x batch_size),
        else a sample may be evicted before it is read (then its read is a miss)."""
        self.num_replicas, self.rank = ranks(num_replicas, rank)
        if window < 1 or prefetch < 1:
            raise ValueError("window and prefetch must be at least 1")
        self.reuse_lag = window if reuse_lag is None else reuse_lag
        if self.reuse_lag < 0:
            raise ValueError("reuse_lag must be at least 0")
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
        return epoch_order(len(self.dataset), self.seed + self.epoch, self.shuffle,
                           self.per_rank * self.num_replicas)[self.rank::self.num_replicas]

    def refresh(self) -> set[int]:
        """The samples whose files are wholly cached now, from the block reports: the
        cached bytes of the files under the samples' common directory in each dataset,
        asked of the master a page at a time (`du` per file), against the files' listed
        sizes. A master that does not answer: nothing is taken as cached (the epoch
        goes on, prefetching)."""
        fs = self.dataset.fs
        dirs: dict[str, list[str]] = {}
        for p in self.dataset.paths:
            ds, _, rel = p.partition("/")
            dirs.setdefault(ds, []).append(rel)
        cached: set[int] = set()
        try:
            by_ds = {ds: _cached_by_file(fs, ds, _common_dir(rels))
                     for ds, rels in dirs.items()}
            for i, p in enumerate(self.dataset.paths):
                ds, _, rel = p.partition("/")
                got = by_ds[ds].get(rel, 0)
                if got and got >= fs.info(p)["size"]:
                    cached.add(i)
        except Exception as exc:  # noqa: BLE001 - a hint: without it, nothing is cached
            log.warning("which samples are cached is not known this epoch: %s", exc)
            cached = set()
        self.cached = cached
        return cached

    def _hint(self, samples: list[int], soon: bool, stats: dict) -> int:
        """Tell the cache when these samples are read again (fs.hint_reuse), the first
        soonest, counted in `stats` (its epoch's); the blocks held. A hint: failures are
        counted, never raised."""
        try:
            held = self.dataset.fs.hint_reuse([self.dataset.paths[i] for i in samples], soon)
        except Exception as exc:  # noqa: BLE001 - a hint: reads go on without it
            stats["hints_failed"] = stats.get("hints_failed", 0) + 1
            log.debug("reuse hint of %d samples: %s", len(samples), exc)
            return 0
        if not soon:
            stats["done"] = stats.get("done", 0) + len(samples)
        return held

    def __iter__(self):
        cached = self.refresh()
        mine = self.order()
        # this epoch's cached samples are wanted, the first in the order soonest: kept
        # ahead of last epoch's leftovers, the ones read last evicted first
        stats = self.stats = {"samples": 0, "ready": 0, "waited_s": 0.0, "forced": 0,
                              "prefetched": 0, "prefetch_failed": 0, "done": 0,
                              "hints_failed": 0, "cached": len(cached)}
        stats["held_blocks"] = self._hint([i for i in mine if i in cached], True, stats)
        landed: set[int] = set()      # prefetched, in the window
        failed: set[int] = set()      # prefetch failed, in the window: not waited for
        waiting: set[int] = set()     # in the window, not yielded
        todo: collections.deque[int] = collections.deque()   # to prefetch, in order
        state = {"in_flight": 0, "landings": 0}
        cv = threading.Condition()
        fs = self.dataset.fs
        ended = False
        handed: collections.deque[int] = collections.deque()   # the last `reuse_lag`
        done: list[int] = []                                    # to say are done

        def fetch(i: int) -> None:
            try:
                ok = fs.prefetch(self.dataset.paths[i])
            except Exception:  # noqa: BLE001 - a hint: the reader reports what is wrong
                ok = False
            with cv:
                if i in waiting:            # (one yielded meanwhile is forgotten)
                    (landed if ok else failed).add(i)
                stats["prefetched" if ok else "prefetch_failed"] += 1
                state["in_flight"] -= 1
                state["landings"] += 1
                cv.notify_all()

        pool = ThreadPoolExecutor(self.prefetch, thread_name_prefix="fc-substitute")
        hints = ThreadPoolExecutor(1, thread_name_prefix="fc-reuse")    # in order
        win = Window(mine, self.window)
        starved = -1                  # landings seen when a wait last found none
        try:
            while len(win):
                with cv:
                    for i in win.fill():
                        waiting.add(i)
                        if i not in cached:
                            todo.append(i)
                    while todo and state["in_flight"] < self.prefetch:
                        i = todo.popleft()   # at most `prefetch` in flight: nothing
                        if i in waiting:     # piles up behind a slow store
                            state["in_flight"] += 1
                            pool.submit(fetch, i)

                    def ready(i: int) -> bool:
                        return i in cached or i in landed

                    def worth(i: int) -> bool:   # ready, or never will be: no wait
                        return i in cached or i in landed or i in failed
                    got = win.take(worth)
                    if got is None and starved == state["landings"]:
                        got = win.take_head()    # nothing landed since the last wait
                        stats["forced"] += 1     # ran out: do not wait again for now
                    elif got is None:     # nothing ready: wait for a landing, a while
                        t0 = time.monotonic()
                        deadline = t0 + self.max_wait
                        while got is None and time.monotonic() < deadline:
                            cv.wait(deadline - time.monotonic())
                            got = win.take(worth)
                        stats["waited_s"] += time.monotonic() - t0
                        if got is None:
                            got = win.take_head()
                            stats["forced"] += 1
                            starved = state["landings"]
                    was_ready = ready(got)
                    for kept in (waiting, landed, failed):
                        kept.discard(got)
                stats["samples"] += 1
                stats["ready"] += was_ready
                yield got
                handed.append(got)
                if len(handed) > self.reuse_lag:   # read by now: done for this epoch,
                    done.append(handed.popleft())  # so it goes before what is not
                    if len(done) >= _DONE_BATCH:
                        hints.submit(self._hint, done, False, stats)
                        done = []
            if done:                                # the epoch's end: what is left
                hints.submit(self._hint, done, False, stats)
            ended = True
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            # an epoch that ended sends every hint still queued (its thread, in the
            # background); one left early drops them
            hints.shutdown(wait=False, cancel_futures=not ended)

    def ready_ratio(self) -> float:
        """Of the last epoch's samples (so far), the share this sampler yielded believing
        them cached or landed. A belief, not a measurement: under LRU a prefetch may
        evict a sample the sampler still counts as cached; the workers' hit and miss
        counts (`status`) say what the reads found."""
        return self.stats.get("ready", 0) / max(1, self.stats.get("samples", 0))


def ranks(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """(ranks, this rank): as given, else torch.distributed's when initialized, else
    (1, 0)."""
    from .torch import _dist
    dist = _dist()
    n = num_replicas if num_replicas is not None else (dist.get_world_size() if dist else 1)
    r = rank if rank is not None else (dist.get_rank() if dist else 0)
    if not 0 <= r < n:
        raise ValueError(f"rank {r} is not in [0, {n})")
    return n, r


def epoch_order(n: int, seed: int, shuffle: bool, total: int) -> list[int]:
    """One epoch's order of `n` samples (seeded permutation, or as is), cut or padded by
    repeating to `total`, as torch's DistributedSampler does."""
    order = list(range(n))
    if shuffle:
        random.Random(seed).shuffle(order)
    return order[:total] if total <= n else (order * (-(-total // n)))[:total]


def _common_dir(rels: list[str]) -> str:
    """The deepest directory holding all of `rels` ("" : the dataset's root)."""
    import posixpath
    parents = [posixpath.dirname(r) for r in rels]
    try:
        return posixpath.commonpath(parents) if all(parents) else ""
    except ValueError:
        return ""


def _cached_by_file(fs, dataset: str, under: str) -> dict[str, int]:
    """{path in the dataset: cached bytes} of the files under `under`, in pages."""
    out: dict[str, int] = {}
    after = None
    prefix = f"{under}/" if under else ""
    while True:
        page = fs.client.cluster.master("du", {"ds": dataset, "p": under, "per_file": True,
                                               "after": after})
        out.update({k if k.startswith(prefix) else prefix + k: v
                    for k, v in page["cached_by_file"].items()})
        after = page["next"]
        if after is None:
            return out
