"""Workload 4, capacity: a 3-node Ray cluster (`ray.cluster_utils.Cluster`), each node's
cache 40% of the dataset. Every epoch the dataset is reshuffled and split into one shard
per node; a Ray task pinned to each node reads its shard. Measured per epoch: time and
hit ratio, for fluidcache `partitioned` (blocks spread over all nodes: 3 x 40% holds it
all), fluidcache `local-first` (each node caches what it reads) and a node-local fsspec
`simplecache` per node (unbounded: it keeps whatever its node read before).

All three "nodes" are processes on one machine, so fluid's short-circuit would see every
node's tier files; it is turned off here (reads go over TCP, as between machines).
"""
from __future__ import annotations

import os
import random
import tempfile
import time


def run(endpoint: str, options: dict, names: list[str], expected: dict[str, int],
        dataset_bytes: int, epochs: int, home: str) -> dict:
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from fluidcache import cluster as fc, config, connect

    rc = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                      "include_dashboard": False})
    for _ in range(2):
        rc.add_node(num_cpus=1)
    rc.wait_for_nodes()
    os.environ["FLUIDCACHE_HOME"] = home
    quota = max(4 << 20, int(dataset_bytes * 0.4))
    mem = tempfile.mkdtemp(prefix="fc-cap-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                           else None)
    cfg = config.load(tiers=[{"medium": "MEM", "path": mem, "quota": quota}],
                      block_size=1 << 20, host="127.0.0.1")
    out: dict = {"quota_per_node": quota, "dataset_bytes": dataset_bytes, "nodes": 3}
    try:
        fc.start(cfg, rc.address, dashboard=False)
        client = connect()
        client.create_dataset("part", {"/": "s3://bench/cap"}, options)
        client.create_dataset("lf", {"/": "s3://bench/cap"}, options, routing="local-first")
        ray.init(address=rc.address, runtime_env={"env_vars": {"FLUIDCACHE_HOME": home}})
        node_ids = [n["NodeID"] for n in ray.nodes() if n["Alive"]]

        @ray.remote(num_cpus=0)
        def read_shard(system: str, shard: list[str], cache_dir: str | None):
            import fsspec
            import xxhash
            if system == "simplecache":
                fs = fsspec.filesystem("simplecache", target_protocol="s3",
                                       target_options=dict(
                                           key=options["key"], secret=options["secret"],
                                           client_kwargs={"endpoint_url": endpoint}),
                                       cache_storage=cache_dir, skip_instance_cache=True)
                before = sum(len(f) for _, _, f in os.walk(cache_dir))
                got = {n: xxhash.xxh3_64_intdigest(fs.cat_file(f"bench/cap/{n}")) >> 1
                       for n in shard}
                after = sum(len(f) for _, _, f in os.walk(cache_dir))
                return got, len(shard) - (after - before)     # hits: nothing new fetched
            fs = fsspec.filesystem("fluid", short_circuit=False, skip_instance_cache=True)
            got = {n: xxhash.xxh3_64_intdigest(fs.cat_file(f"fluid://{system}/{n}")) >> 1
                   for n in shard}
            return got, None

        def fluid_counts(ds: str) -> tuple[int, int]:
            d = next(d for d in client.status()["datasets"] if d["name"] == ds)
            return d["hits"], d["misses"]

        cache_root = tempfile.mkdtemp(prefix="fc-cap-sc-")
        for system in ("part", "lf", "simplecache"):
            rng = random.Random(0)
            rows = []
            for epoch in range(epochs):
                order = names[:]
                rng.shuffle(order)
                shards = [order[k::3] for k in range(3)]
                before = fluid_counts(system) if system != "simplecache" else None
                t0 = time.perf_counter()
                refs = [read_shard.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                    node_ids[k], soft=False)).remote(system, shards[k],
                                                     os.path.join(cache_root, f"node{k}"))
                    for k in range(3)]
                results = ray.get(refs, timeout=1800)
                dt = time.perf_counter() - t0
                for got, _ in results:
                    bad = [n for n, d in got.items() if d != expected[n]]
                    if bad:
                        raise AssertionError(f"capacity/{system}: wrong bytes in {bad[:3]}")
                if system == "simplecache":
                    hits = sum(h for _, h in results)
                    ratio = hits / len(names)
                else:
                    # every read (one block per file) counted: the serving processes'
                    # hits reach the worker within 0.5 s, the master with a heartbeat
                    deadline = time.monotonic() + 60
                    while True:
                        h, m = fluid_counts(system)
                        counted = (h - before[0]) + (m - before[1])
                        if counted >= len(names) or time.monotonic() > deadline:
                            break
                        time.sleep(0.2)          # polling the master's counts
                    ratio = (h - before[0]) / max(1, counted)
                rows.append({"epoch": epoch + 1, "s": dt, "hit_ratio": ratio})
            label = {"part": "fluidcache partitioned", "lf": "fluidcache local-first",
                     "simplecache": "simplecache per node"}[system]
            out[label] = rows
    finally:
        try:
            ray.shutdown()
        finally:
            fc.stop()
            rc.shutdown()
            import shutil
            shutil.rmtree(mem, ignore_errors=True)
    return out
