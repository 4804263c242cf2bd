"""Reuse hints on a real cluster with an LRU memory tier (`fs.hint_reuse`): blocks said
to be wanted soon stay, blocks said to be done go first, whatever LRU order says; the
substituting sampler says both as an epoch goes."""
from __future__ import annotations

import random

import pytest

from ..helpers import home_env, small_cluster, wait_for

pytestmark = pytest.mark.integration
KiB = 1024


@pytest.fixture(scope="module")
def lru_cache(tmp_path_factory, moto):
    rnd = random.Random(9)
    files = {f"h{i:03d}.bin": rnd.randbytes(100 * KiB + i) for i in range(60)}   # ~6 MiB
    # a tiny SSD tier below (a default one would take every block the memory tier lets go)
    root = tmp_path_factory.mktemp("hints")
    with small_cluster(root, moto, "hints", files, "--mem", "4MiB", "--ssd",
                       f"{root}/ssd:300KiB", "--block-size", "1MiB",
                       "--eviction", "lru") as env:
        yield env, files


def test_hints_choose_what_an_lru_tier_keeps(lru_cache):
    import fluidcache
    env, files = lru_cache
    with home_env(env["FLUIDCACHE_HOME"]):
        client = fluidcache.connect()
        fs = client.filesystem(skip_instance_cache=True, short_circuit=False)
        paths = sorted(fs.find("fluid://hints"))
        first = paths[:30]
        for p in first:                               # 3 MiB of the 4 MiB tier
            assert fs.cat_file(p) == files[p.rsplit("/", 1)[1]]
            assert fs.prefetch(p)         # landed in its tier (a read returns before)
        # LRU alone would evict first[:10] first: say the opposite
        assert fs.hint_reuse(first[:10], soon=True) == 10
        assert fs.hint_reuse(first[20:30], soon=False) == 10
        for p in paths[30:50]:                        # 2 MiB more: room is made
            assert fs.cat_file(p) == files[p.rsplit("/", 1)[1]]
        # done: went first (two fit in the SSD tier they were demoted to first)
        assert fs.hint_reuse(first[20:30], soon=False) <= 2
        assert fs.hint_reuse(first[:10], soon=True) == 10       # wanted: all kept
        # a file not there is skipped; one outside the dataset is refused
        assert fs.hint_reuse(["fluid://hints/absent.bin", first[0]], soon=True) == 1
        with pytest.raises(PermissionError):
            fs.hint_reuse(["fluid://hints/../other/x.bin"], soon=True)
        assert fs.hint_reuse([], soon=False) == 0
        client.close()


def test_the_substituting_sampler_says_what_is_done(lru_cache):
    import fluidcache
    from fluidcache.integrations.torch import FluidDataset, SubstitutingSampler
    env, files = lru_cache
    with home_env(env["FLUIDCACHE_HOME"]):
        client = fluidcache.connect()
        fs = client.filesystem(skip_instance_cache=True, short_circuit=False)
        ds = FluidDataset("fluid://hints", filesystem=fs)
        sampler = SubstitutingSampler(ds, window=8, seed=3, prefetch=4, reuse_lag=4)
        # what is cached comes from the block reports: the last test's reach the master
        # with a heartbeat
        wait_for(sampler.refresh, timeout=60, what="the master to hear of cached blocks")
        for epoch in (1, 2):
            sampler.set_epoch(epoch)
            seen = []
            for i in sampler:
                assert ds[i] == files[ds.paths[i].rsplit("/", 1)[1]]
                seen.append(i)
            assert sorted(seen) == list(range(len(files)))
            st = sampler.stats
            assert st["hints_failed"] == 0 and 0 < st["held_blocks"] <= st["cached"]
            wait_for(lambda st=st: st["done"] == len(files) - 4,   # all but the last
                     timeout=30, what="the epoch's last hints")     # `reuse_lag`
        client.close()
    with pytest.raises(ValueError):
        SubstitutingSampler(ds, reuse_lag=-1)
