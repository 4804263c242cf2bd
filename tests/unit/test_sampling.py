"""The cache-aware distributed sampler's split, without a cluster: every epoch is one
permutation split across the ranks, each sample once, local samples first."""
from __future__ import annotations

import random

import pytest

from fluidcache.integrations.torch import CacheAwareDistributedSampler, assign


class _Paths:
    def __init__(self, n: int) -> None:
        self.paths = [f"ds/f{i}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.paths)


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("seed", range(5))
def test_each_sample_exactly_once_and_mostly_local(ranks, seed):
    rng = random.Random(seed)
    n = 600
    nodes = [f"node{k}" for k in range(ranks)]
    homes = [rng.choice(nodes + [None]) for _ in range(n)]        # a quarter uncached
    order = list(range(n))
    rng.shuffle(order)
    split = assign(order, homes, nodes, n // ranks)
    assert sorted(i for part in split for i in part) == list(range(n))
    assert all(len(part) == n // ranks for part in split)
    local = sum(homes[i] == nodes[r] for r, part in enumerate(split) for i in part) / n
    baseline = sum(homes[i] == nodes[k % ranks] for k, i in enumerate(order)) / n
    cached = sum(h is not None for h in homes) / n
    assert local >= 0.9 * cached > baseline          # nearly every cached sample is local


def test_several_ranks_on_one_node_share_its_samples():
    homes = ["a"] * 6 + ["b"] * 6
    split = assign(list(range(12)), homes, ["a", "a", "b"], 4)
    assert set(split[0] + split[1]) >= set(range(6))    # every "a" sample on an "a" rank
    assert set(split[0]) & set(range(6)) and set(split[1]) & set(range(6))   # shared
    assert set(split[2]) <= set(range(6, 12))
    assert sorted(sum(split, [])) == list(range(12))


def test_the_sampler_covers_every_epoch_and_reshuffles():
    ds = _Paths(12)
    homes = ["n0", "n1", "n2"] * 4
    samplers = [CacheAwareDistributedSampler(ds, 3, r, seed=7, rank_nodes=["n0", "n1", "n2"],
                                             homes=homes) for r in range(3)]
    epochs = []
    for epoch in range(3):
        for s in samplers:
            s.set_epoch(epoch)
        parts = [list(s) for s in samplers]
        assert sorted(sum(parts, [])) == list(range(12)) and all(len(p) == 4 for p in parts)
        assert all(s.local_share() == 1.0 for s in samplers)
        epochs.append(parts)
    assert epochs[0] != epochs[1]                       # a new permutation each epoch


def test_padding_and_drop_last_like_torch():
    ds = _Paths(10)
    pad = [list(CacheAwareDistributedSampler(ds, 3, r, rank_nodes=[None] * 3,
                                             homes=[None] * 10)) for r in range(3)]
    assert all(len(p) == 4 for p in pad) and set(sum(pad, [])) == set(range(10))
    drop = [list(CacheAwareDistributedSampler(ds, 3, r, drop_last=True, rank_nodes=[None] * 3,
                                              homes=[None] * 10)) for r in range(3)]
    flat = sum(drop, [])
    assert all(len(p) == 3 for p in drop) and len(set(flat)) == 9
    with pytest.raises(ValueError):
        CacheAwareDistributedSampler(ds, 2, 5, rank_nodes=[None] * 2, homes=[None] * 10)
