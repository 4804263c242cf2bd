"""The policy simulation of bench/policies.py is deterministic (seeded, no clocks), so its
claims are checked here: fill-once keeps >= 0.95 x C/N from epoch 2 under random
per-epoch access, and LRU does worse than that whenever the dataset exceeds the cache."""
from __future__ import annotations

import pytest

from bench.policies import simulate


@pytest.mark.parametrize("ratio", [0.5, 1.5, 2, 3])
def test_fill_once_reaches_the_ideal_from_epoch_two(ratio):
    cache = 400
    n = int(cache * ratio)
    ideal = min(1.0, cache / n)
    ratios = simulate("fill-once", n, cache, epochs=4)
    assert ratios[0] == 0.0
    assert all(r >= 0.95 * ideal for r in ratios[1:]), ratios


@pytest.mark.parametrize("ratio", [1.5, 2, 3])
def test_lru_thrashes_when_the_dataset_exceeds_the_cache(ratio):
    cache = 400
    n = int(cache * ratio)
    lru = simulate("lru", n, cache, epochs=4)
    fill_once = simulate("fill-once", n, cache, epochs=4)
    assert max(lru[1:]) < min(fill_once[1:])


def test_everything_hits_when_the_cache_holds_the_dataset():
    for policy in ("lru", "lfu", "fill-once"):
        assert simulate(policy, 200, 400, epochs=3)[1:] == [1.0, 1.0]
