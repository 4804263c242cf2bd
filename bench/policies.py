"""Eviction policies under random per-epoch access (a fresh permutation every epoch).

Simulates one tier of C blocks over a dataset of N blocks with the real tier core
(fluidcache.tiering.core.TierIndex and the real policies), no I/O, and prints the hit
ratio per epoch beside the ideal C/N. CoorDL (Mohan et al., VLDB 2021) showed LRU
thrashing here; fill-once keeps a fixed C/N of the dataset and hits it every epoch.

    python bench/policies.py                  # N/C = 0.5, 1.5, 2, 3; 5 epochs; 2,000-block cache
    python bench/policies.py --cache 500 --epochs 8 --json out.json
"""
from __future__ import annotations

import argparse
import json
import random

from fluidcache.tiering.core import TierIndex
from fluidcache.tiering.policy import POLICIES, make

BLOCK = 1


def simulate(policy: str, dataset: int, cache: int, epochs: int, seed: int = 0) -> list[float]:
    index = TierIndex([("MEM", cache * BLOCK)], lambda: make(policy))
    rng = random.Random(seed)
    order = list(range(dataset))
    ratios = []
    for _ in range(epochs):
        rng.shuffle(order)
        hits = 0
        for b in order:
            key = f"b{b}"
            if key in index:
                index.access(key)
                hits += 1
            elif index.reserve(key, BLOCK) is not None:
                index.commit(key)
        ratios.append(hits / dataset)
    return ratios


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=int, default=2000, help="cache size in blocks")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--ratios", default="0.5,1.5,2,3", help="dataset/cache ratios")
    p.add_argument("--json", help="also write raw results here")
    a = p.parse_args(argv)
    results = []
    print(f"cache {a.cache} blocks; hit ratio per epoch (epoch 1 is cold)\n")
    print(f"{'N/C':>5} {'policy':<10} {'ideal C/N':>9}  " +
          " ".join(f"{'ep' + str(e + 1):>6}" for e in range(a.epochs)) + "   ep2+ / ideal")
    for r in (float(x) for x in a.ratios.split(",")):
        n = int(a.cache * r)
        ideal = min(1.0, a.cache / n)
        for name in POLICIES:
            ratios = simulate(name, n, a.cache, a.epochs)
            warm = sum(ratios[1:]) / max(1, len(ratios) - 1)
            results.append({"dataset_over_cache": r, "policy": name, "ideal": ideal,
                            "hit_ratio": ratios, "warm_over_ideal": warm / ideal})
            print(f"{r:>5} {name:<10} {ideal:>9.3f}  " +
                  " ".join(f"{x:>6.3f}" for x in ratios) + f"   {warm / ideal:>6.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
