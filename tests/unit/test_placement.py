"""Rendezvous placement (fluidcache.placement): determinism, balance, minimal movement."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from fluidcache.placement import owners, ranked

WORKERS = [f"worker-{i}" for i in range(10)]
KEYS = [f"block-{i:06d}" for i in range(100_000)]


@pytest.fixture(scope="module")
def owner_of() -> dict[str, str]:
    return {k: owners(k, WORKERS)[0] for k in KEYS}


def test_owners_and_ranked_are_deterministic_and_order_free():
    shuffled = WORKERS[:]
    random.Random(7).shuffle(shuffled)
    for k in KEYS[:500]:
        assert ranked(k, WORKERS) == ranked(k, shuffled)
        assert owners(k, WORKERS, 3) == owners(k, shuffled, 3)
        assert sorted(ranked(k, WORKERS)) == sorted(WORKERS)


def test_owners_are_the_top_of_ranked():
    for k in KEYS[:200]:
        r = ranked(k, WORKERS)
        assert owners(k, WORKERS) == r[:1]
        assert owners(k, WORKERS, 3) == r[:3]
        assert owners(k, WORKERS, 99) == r        # fewer workers than replicas: all, ranked
        assert owners(k, WORKERS, 0) == r[:1]     # at least one owner


def test_no_workers_means_no_owners():
    assert owners("k", []) == [] and ranked("k", []) == []


def test_replicas_are_spread_over_distinct_workers():
    for k in KEYS[:200]:
        assert len(set(owners(k, WORKERS, 3))) == 3


def test_balance_within_ten_percent(owner_of):
    counts = Counter(owner_of.values())
    mean = len(KEYS) / len(WORKERS)
    assert set(counts) == set(WORKERS)
    for w, n in counts.items():
        assert abs(n - mean) <= 0.10 * mean, (w, n, mean)


def test_adding_a_worker_moves_keys_only_to_it(owner_of):
    new = "worker-10"
    after = {k: owners(k, WORKERS + [new])[0] for k in KEYS}
    moved = [k for k in KEYS if after[k] != owner_of[k]]
    assert moved, "the new worker must take some keys"
    assert all(after[k] == new for k in moved)
    # About 1/11 of the keys move; far from all of them.
    assert 0.07 < len(moved) / len(KEYS) < 0.115


def test_removing_a_worker_moves_only_its_keys(owner_of):
    gone = "worker-3"
    rest = [w for w in WORKERS if w != gone]
    after = {k: owners(k, rest)[0] for k in KEYS}
    moved = {k for k in KEYS if after[k] != owner_of[k]}
    assert moved == {k for k in KEYS if owner_of[k] == gone}
