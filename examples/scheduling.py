"""Data-affinity scheduling: group files by the node that caches them and run one Ray
task per group on that node (soft affinity), each reading its files through fluid://.

    python examples/scheduling.py fluid://mixed/images
"""
from __future__ import annotations

import argparse
import hashlib
import json

import fsspec
import ray

import fluidcache
from fluidcache.scheduling import split_by_node, strategy_for


@ray.remote(num_cpus=0)
def digest_files(urls: list[str]) -> dict:
    fs = fsspec.filesystem("fluid")
    return {"node": ray.get_runtime_context().get_node_id(),
            "digests": {u: hashlib.sha256(fs.cat_file(u)).hexdigest() for u in urls}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    a = p.parse_args(argv)
    fs = fsspec.filesystem("fluid")
    urls = ["fluid://" + f for f in fs.find(a.url)]
    fluidcache.init_ray(log_to_driver=False)
    try:
        groups = split_by_node(urls)
        refs = []
        for node, group in groups.items():
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
            strategy = NodeAffinitySchedulingStrategy(node, soft=True) if node else "DEFAULT"
            refs.append(digest_files.options(scheduling_strategy=strategy).remote(group))
        results = ray.get(refs)
        print(json.dumps({"groups": {str(k): len(v) for k, v in groups.items()},
                          "ran_on": [r["node"] for r in results],
                          "strategy_for_first": str(getattr(strategy_for(urls[0]),
                                                            "node_id", "DEFAULT")),
                          "digests": {u: d for r in results for u, d in r["digests"].items()}}))
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
