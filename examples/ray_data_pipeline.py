"""A Ray Data pipeline over fluid://: a Parquet table and a folder of binary files, read
by Ray tasks through the cache of the node each task runs on.

    python examples/ray_data_pipeline.py fluid://mixed/tables/data.parquet fluid://mixed/images
"""
from __future__ import annotations

import argparse
import json

import ray

import fluidcache
import fluidcache.integrations.ray_data as frd


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("parquet_url")
    p.add_argument("binary_url")
    a = p.parse_args(argv)
    fluidcache.init_ray(log_to_driver=False)
    try:
        table = frd.read_parquet(a.parquet_url)
        rows = table.count()
        total = table.sum("value") if "value" in table.columns() else None
        files = frd.read_binary_files(a.binary_url, include_paths=True)
        sizes = files.map_batches(lambda b: {"path": b["path"],
                                             "n": [len(x) for x in b["bytes"]]},
                                  batch_format="numpy").take_all()
        print(json.dumps({"rows": rows, "value_sum": total,
                          "files": {r["path"]: int(r["n"]) for r in sizes}}))
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
