"""The substituting sampler on a real cluster whose cache holds half the dataset
(fill-once: what is cached stays, nothing more is admitted): under a DataLoader with
worker processes (fork and spawn) every epoch reads each sample exactly once with the
right bytes; the samples cached at the epoch's start are all read as hits, and misses
prefetched ahead are kept aside by their owner until read (hits too, though no tier
took them)."""
from __future__ import annotations

import random

import pytest

from ..helpers import home_env, small_cluster

pytestmark = pytest.mark.integration
KiB = 1024


@pytest.fixture(scope="module")
def half_cache(tmp_path_factory, moto):
    rnd = random.Random(5)
    files = {f"s{i:03d}.bin": rnd.randbytes(100 * KiB + i) for i in range(160)}   # ~16 MiB
    root = tmp_path_factory.mktemp("sampler")
    with small_cluster(root, moto, "smp", files, "--mem", "4MiB", "--ssd",
                       f"{root}/ssd:4MiB", "--block-size", "1MiB",
                       "--eviction", "fill-once") as env:
        yield env, files


class _Digest:
    def __call__(self, data: bytes):
        import hashlib
        return hashlib.sha256(data).hexdigest()


def _counts(client) -> tuple[int, int]:
    d = next(d for d in client.status()["datasets"] if d["name"] == "smp")
    return d["hits"], d["misses"]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_every_sample_once_cached_ones_hit_misses_land(half_cache, context):
    torch = pytest.importorskip("torch")
    import hashlib

    import fluidcache
    from fluidcache.integrations.torch import FluidDataset, SubstitutingSampler
    from tests.helpers import wait_for
    env, files = half_cache
    with home_env(env["FLUIDCACHE_HOME"]):
        client = fluidcache.connect()
        if context == "fork":                  # first: fill the cache (half fits)
            client.load("fluid://smp", wait=True)
        # reads over TCP: the workers count every read (short-circuit hits of DataLoader
        # processes are reported by them later, and lost when they exit first)
        ds = FluidDataset("fluid://smp", transform=_Digest(),
                          filesystem=client.filesystem(skip_instance_cache=True,
                                                       short_circuit=False))
        want = {i: hashlib.sha256(files[p.rsplit("/", 1)[1]]).hexdigest()
                for i, p in enumerate(ds.paths)}
        sampler = SubstitutingSampler(ds, window=48, seed=11, prefetch=8)
        sampler.set_epoch(1 if context == "fork" else 2)
        cached = sampler.refresh()
        assert 0.3 * len(files) < len(cached) < 0.7 * len(files)   # about half fits
        before = _counts(client)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=8, sampler=sampler, num_workers=2,
            multiprocessing_context=context, collate_fn=list)
        got = [d for batch in loader for d in batch]
        order = sampler.order()
        assert sorted(got) == sorted(want.values())               # each once, right bytes
        assert len(got) == len(files) == sampler.stats["samples"]
        place = {s: k for k, s in enumerate(order)}
        assert sampler.stats["ready"] >= len(cached)
        # the output order is within the window of the seeded permutation
        by_digest = {d: i for i, d in want.items()}            # (unique digests here)
        out = [by_digest[d] for d in got]
        assert max(abs(k - place[i]) for k, i in enumerate(out)) <= 47
        after = wait_for(lambda: (c := _counts(client)) and
                         sum(c) - sum(before) >= len(files) and c, what="the epoch's counts")
        hits = after[0] - before[0]
        assert hits >= len(cached)                 # every cached sample read as a hit
        assert sampler.stats["prefetched"] > 0 and hits > len(cached), (hits, len(cached))
        client.close()


def test_short_circuit_hits_of_dataloader_processes_reach_the_workers(half_cache):
    """DataLoader worker processes end with os._exit: the hits they read straight from
    the tier files are reported before that (multiprocessing's exit finalizers), so the
    workers count them (and keep those blocks hot)."""
    torch = pytest.importorskip("torch")
    import fluidcache
    from fluidcache.integrations.torch import FluidDataset, SubstitutingSampler
    from tests.helpers import wait_for
    env, files = half_cache
    with home_env(env["FLUIDCACHE_HOME"]):
        client = fluidcache.connect()
        client.load("fluid://smp", wait=True)                 # (half fits)
        fs = client.filesystem(skip_instance_cache=True)      # short-circuit on
        cached = SubstitutingSampler(FluidDataset("fluid://smp", filesystem=fs)).refresh()
        ds = FluidDataset("fluid://smp", filesystem=fs)
        mine = sorted(cached)
        assert mine
        before = _counts(client)
        loader = torch.utils.data.DataLoader(ds, batch_size=8, sampler=mine,
                                             num_workers=2, collate_fn=list)
        assert sum(len(b) for b in loader) == len(mine)
        wait_for(lambda: _counts(client)[0] - before[0] >= len(mine), timeout=30,
                 what="the DataLoader processes' short-circuit hits at the workers")
        client.close()
