"""Remote reads, part 2: a DataLoader epoch on every node of a multi-node cluster at once.

A Ray cluster of `--nodes` nodes on this machine (`ray.cluster_utils.Cluster`), each
raylet with its own FLUIDCACHE_MACHINE_ID (`bench-node-<i>`), so a client counts as on
the same machine as one worker only: short-circuit reads apply to its own node's blocks,
every other block comes over TCP. fluidcache deployed on it (one worker per node, each
its own MEM tier directory under one /dev/shm base), dataset `bench` loaded, its blocks
partitioned over the workers by rendezvous placement. Then one reader actor per node
(pinned, NodeAffinitySchedulingStrategy soft=False) prepares (imports, finds the master
through Ray as on a remote machine, lists), and all run `_epoch` (2 DataLoader processes,
batch 32, bytes checked) at once. Samples/s of all nodes together = the samples of all
nodes / the time from the first node's start to the last node's end; per node its rate
and its read counters (short-circuit vs remote, served = remote reads the worker's
serving processes answered), summed over its DataLoader processes (each writes them when
it exits, off the read path). Every sample's xxh3 is checked.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter

from fluidcache.client.fs import FluidFileSystem

from .remote import _epoch

DATA = "fluid://bench/img"


def _dump(fs: FluidFileSystem, counts: str) -> None:
    reader = fs._client                        # never make a reader just to report
    if reader is not None:
        with open(os.path.join(counts, f"{os.getpid()}.json"), "w") as f:
            json.dump(dict(reader.counters), f)


class _Counted(FluidFileSystem):
    """A fluid filesystem that, remade in a forked DataLoader process (FluidDataset
    unpickles it there), writes that process's read counters to directory `counts`
    when the process exits (a multiprocessing finalizer)."""

    def __init__(self, *args, counts: str = "", parent: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if counts and os.getpid() != parent:
            from multiprocessing import util
            util.Finalize(None, _dump, args=(self, counts), exitpriority=10)


class _NodeReader:
    """One per node: `prepare` outside the timing, then `epoch` when all are ready."""

    def prepare(self, counts: str, digests: dict) -> dict:
        import ray
        import torch.utils.data  # noqa: F401 - imported before the epoch, not in it

        import fluidcache
        os.makedirs(counts, exist_ok=True)
        with fluidcache.connect() as c:        # no discovery file here: via Ray
            e = c.endpoint
        self.counts, self.digests = counts, digests
        self.fs = _Counted(address=e.master, token=e.token, namespace=e.namespace,
                           skip_instance_cache=True, counts=counts, parent=os.getpid())
        self.n = len(self.fs.find(DATA))
        cluster = self.fs.client.cluster
        cluster.map(refresh=True)
        return {"machine": os.environ.get("FLUIDCACHE_MACHINE_ID"), "samples": self.n,
                "node": ray.get_runtime_context().get_node_id(),
                "local_workers": len(cluster.local_workers)}

    def epoch(self) -> dict:
        for name in os.listdir(self.counts):        # the last epoch's loader processes
            os.unlink(os.path.join(self.counts, name))
        t0 = time.time()
        rate = _epoch(self.fs, self.digests, workers=2)
        t1 = time.time()
        counts = Counter(self.fs.client.counters)
        files = os.listdir(self.counts)
        for name in files:
            with open(os.path.join(self.counts, name)) as f:
                counts.update(json.load(f))
        return {"rate": rate, "seconds": self.n / rate, "start": t0, "end": t1,
                "loader_procs": len(files), "counters": {k: v for k, v in counts.items() if v}}


def _node_args(i: int) -> dict:
    return {"num_cpus": 1, "object_store_memory": 100 * 2**20,
            "env_vars": {"FLUIDCACHE_MACHINE_ID": f"bench-node-{i}"}}


def part2(a, moto, home, digests: dict) -> list[float]:
    """Samples/s of a DataLoader epoch on all `a.nodes` nodes at once, together; one
    figure per round (`a.rounds`)."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from fluidcache import cluster as fc
    from fluidcache import config, connect

    print(f"\npart 2: {a.nodes} Ray nodes on this machine, each its own machine id",
          flush=True)
    mem = tempfile.mkdtemp(prefix="fc-bench-nodes-",
                           dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    # as tests/integration/test_membership.py: nodes without RAY_AUTH_MODE, drivers
    # joining with the token of ~/.ray/auth_token when there is one (Ray's default)
    cluster = Cluster(initialize_head=True,
                      head_node_args=dict(_node_args(0), include_dashboard=False))
    started = False
    try:
        nodes = [cluster.head_node] + [cluster.add_node(**_node_args(i))
                                       for i in range(1, a.nodes)]
        cluster.wait_for_nodes()
        # one MEM base: each worker claims its own directory under it (mem, mem/w1, ...)
        cfg = config.load(tiers=[{"medium": "MEM", "path": mem,
                                  "quota": f"{2 * (a.big_mib + 400)}MiB"}],
                          serve_processes=a.serve_processes)
        fc.start(cfg, address=cluster.address, dashboard=False)
        started = True
        with connect() as client:
            client.create_dataset("bench", {"/": "s3://bench"}, moto.options())
            t0 = time.perf_counter()
            client.load("fluid://bench")
            print(f"loaded in {time.perf_counter() - t0:.1f}s; blocks per worker:")
            workers = client.status()["workers"]
        index = {n.node_id: i for i, n in enumerate(nodes)}
        for w in sorted(workers, key=lambda w: index.get(w["node_id"], 99)):
            print(f"  node {index.get(w['node_id'], '?')} machine {w.get('machine', '?')}: "
                  f"{sum(t['blocks'] for t in w['tiers'])} blocks in {w['tiers'][0]['path']}")
        if sorted(w.get("machine") for w in workers) != \
                sorted(f"bench-node-{i}" for i in range(a.nodes)):
            raise RuntimeError("workers' machine ids are not the raylets' env_vars: "
                               f"{[w.get('machine') for w in workers]}")

        # the readers' FLUIDCACHE_HOME has no discovery file, as on another machine
        ray.init(address=cluster.address, log_to_driver=False, runtime_env={
            "env_vars": {"FLUIDCACHE_HOME": os.path.join(home, "nodes")}})
        reader = ray.remote(num_cpus=1)(_NodeReader)
        readers = [reader.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n.node_id, soft=False)).remote() for n in nodes]
        infos = ray.get([r.prepare.remote(os.path.join(home, "counts", str(i)), digests)
                         for i, r in enumerate(readers)], timeout=300)
        for i, info in enumerate(infos):
            if (info["machine"], info["node"], info["local_workers"]) != \
                    (f"bench-node-{i}", nodes[i].node_id, 1):
                raise RuntimeError(f"node {i}'s reader: {info} (want machine bench-node-{i},"
                                   f" its node, 1 local worker)")
        rounds = [ray.get([r.epoch.remote() for r in readers], timeout=900)
                  for _ in range(a.rounds)]
    finally:
        if ray.is_initialized():
            ray.shutdown()
        try:
            if started:
                fc.stop()
        finally:
            cluster.shutdown()
            shutil.rmtree(mem, ignore_errors=True)

    rates = []
    total = sum(info["samples"] for info in infos)
    for r, outs in enumerate(rounds):
        print(f"\nround {r + 1}: DataLoader epoch (2 processes) on each node at once, over "
              f"{DATA} ({infos[0]['samples']} samples per node):")
        for i, o in enumerate(outs):
            c = o["counters"]
            print(f"  node {i}: {o['rate']:>8,.0f} samples/s in {o['seconds']:.2f}s; "
                  f"short_circuit {c.get('short_circuit', 0)}, remote {c.get('remote', 0)} "
                  f"(served {c.get('served', 0)}); all counters {c} "
                  f"({o['loader_procs']} loader processes reported)")
        slowest = max(o["seconds"] for o in outs)
        span = max(o["end"] for o in outs) - min(o["start"] for o in outs)
        print(f"  slowest node {slowest:.2f}s; first start to last end {span:.2f}s; together "
              f"{total:,} samples / first start to last end = {total / span:,.0f} samples/s")
        rates.append(total / span)
    return rates
