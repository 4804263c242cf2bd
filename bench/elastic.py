"""Elasticity: what the store serves per epoch after the cluster grows and shrinks.

    python -m bench.elastic                     # 96 MiB, 2 -> 3 -> 2 nodes
    python -m bench.elastic --mib 48 --out bench

A Ray cluster on this machine (`ray.cluster_utils.Cluster`: a head and one node, so two
workers), a dataset of 512 KiB objects in moto S3 behind the latency proxy (20 ms first
byte), loaded. Then, twice, once with rebalancing (the default) and once without (config
`rebalance: false`, which is how fluidcache behaved before it):
  2 -> 3: a node joins; an epoch starts as soon as its worker is up (not waiting for the
          moves), then a second epoch;
  3 -> 2: one of the first two nodes leaves: drained first with rebalancing (`drain
          --wait`), removed as it is without; then two epochs again.
An epoch is one reader process reading every object once (`cat_file`, over TCP: the
nodes share this machine, so short-circuit reads are off, as between machines), every
object checked. Store bytes are what the workers fetched from the store (their
`ufs_bytes_read`) during the epoch; one run of each, so each figure is one measurement
(no median: the store bytes do not depend on timing much, the seconds do).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from fluidcache.testing.proxy import LatencyProxy
from fluidcache.testing.s3 import MotoServer

MiB = 1024**2
_READ = """
import fsspec, json, sys, time, xxhash
fs = fsspec.filesystem("fluid", short_circuit=False, skip_instance_cache=True)
names, bad, t0 = json.loads(sys.argv[1]), 0, time.perf_counter()
for n, want in names.items():
    bad += xxhash.xxh3_64_intdigest(fs.cat_file("fluid://el/" + n)) != want
print(json.dumps({"s": time.perf_counter() - t0, "bad": bad}))
"""


def _epoch(env: dict, want: dict) -> float:
    p = subprocess.run([sys.executable, "-c", _READ, json.dumps(want)], env=env,
                       capture_output=True, text=True, timeout=1800, check=True)
    got = json.loads(p.stdout)
    if got["bad"]:
        raise AssertionError(f"{got['bad']} objects read wrong")
    return got["s"]


def run(mib: int, delay: float, rate: int) -> dict:
    import xxhash
    from ray.cluster_utils import Cluster

    from fluidcache import cluster as fc, config, connect

    n = mib * 2
    objects = {f"o{i:04d}.bin": os.urandom(MiB // 2) for i in range(n)}
    want = {k: xxhash.xxh3_64_intdigest(v) for k, v in objects.items()}
    out: dict = {"objects": n, "dataset_bytes": n * MiB // 2, "delay_ms": delay * 1000,
                 "rate": rate}
    with MotoServer() as s3, LatencyProxy(s3.endpoint, delay) as proxy:
        fs = s3.filesystem()
        fs.mkdir("bench-el")
        fs.pipe({f"bench-el/{k}": v for k, v in objects.items()})
        options = dict(s3.options(), endpoint_url=proxy.endpoint)
        for rebalance in (True, False):
            out["with" if rebalance else "without"] = _one(
                Cluster, fc, config, connect, options, want, rebalance, mib, rate)
    return out


def _one(Cluster, fc, config, connect, options: dict, want: dict, rebalance: bool,
         mib: int, rate: int) -> dict:
    rc = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                      "include_dashboard": False})
    first = rc.add_node(num_cpus=1)
    rc.wait_for_nodes()
    home = tempfile.mkdtemp(prefix="fc-el-home-")
    mem = tempfile.mkdtemp(prefix="fc-el-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                           else None)
    env = dict(os.environ, FLUIDCACHE_HOME=home)
    os.environ["FLUIDCACHE_HOME"] = home
    cfg = config.load(tiers=[{"medium": "MEM", "path": mem, "quota": 2 * mib * MiB}],
                      block_size=MiB, host="127.0.0.1", rebalance=rebalance,
                      rebalance_rate=rate)
    rows = []
    try:
        fc.start(cfg, rc.address, dashboard=False)
        c = connect()
        c.create_dataset("el", {"/": "s3://bench-el"}, options, sync="never")
        c.load("fluid://el", wait=True)

        def workers() -> dict:
            return {w["node_id"]: w for w in c.status()["workers"] if w["alive"]}

        def until(cond, what: str) -> None:
            deadline = time.monotonic() + 300
            while not cond():
                if time.monotonic() > deadline:
                    raise TimeoutError(what)
                time.sleep(0.2)          # polling the cluster's state (a condition)

        def counted() -> tuple[int, int]:
            ws = workers().values()
            return (sum(w["stats"]["ufs_bytes_read"] for w in ws),
                    sum(w["stats"].get("peer_fetches", 0) for w in ws))

        def epochs(phase: str) -> None:
            for k in (1, 2):
                before = counted()
                s = _epoch(env, want)
                after = counted()
                rows.append({"phase": phase, "epoch": k, "s": s,
                             "store_bytes": after[0] - before[0],
                             "peer_fetches": after[1] - before[1]})

        until(lambda: len(workers()) == 2, "two workers")
        epochs("2 nodes, loaded")
        rc.add_node(num_cpus=1)
        until(lambda: len(workers()) == 3, "a third worker")
        epochs("2 -> 3")
        drain_s = 0.0
        if rebalance:          # the node that leaves is one of the first two: it holds
            t0 = time.perf_counter()                           # its share and more
            c.drain(first.node_id, wait=True, timeout=600)
            drain_s = time.perf_counter() - t0
        rc.remove_node(first)
        until(lambda: len(workers()) == 2, "two workers again")
        epochs("3 -> 2")
        rb = c.status()["rebalance"]
        c.close()
    finally:
        fc.stop()
        rc.shutdown()
        shutil.rmtree(mem, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
    return {"epochs": rows, "rebalance": rb, "drain_s": drain_s}


def markdown(r: dict, command: str) -> str:
    mb = r["dataset_bytes"] / MiB
    lines = [f"## Elasticity (`{command}`)", "",
             f"{r['objects']} objects of 512 KiB ({mb:.0f} MiB) in moto S3 behind a "
             f"{r['delay_ms']:.0f} ms first-byte proxy, 1 MiB blocks, one reader process "
             "over TCP per epoch. Store MiB = what the workers fetched from the store in "
             "that epoch (one run each: single measurements).", "",
             "| after | epoch | store MiB, rebalancing | store MiB, without | "
             "epoch s, rebalancing | epoch s, without | blocks read from a holder "
             "while moving |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for a, b in zip(r["with"]["epochs"], r["without"]["epochs"], strict=True):
        lines.append(f"| {a['phase']} | {a['epoch']} | {a['store_bytes'] / MiB:.1f} | "
                     f"{b['store_bytes'] / MiB:.1f} | {a['s']:.2f} | {b['s']:.2f} | "
                     f"{a.get('peer_fetches', 0)} |")
    rb = r["with"]["rebalance"]
    lines += ["", f"Rebalancing moved {rb['moved_blocks']} blocks "
              f"({rb['bytes_moved'] / MiB:.1f} MiB) between workers at up to "
              f"{r['rate'] / MiB:.0f} MiB/s per worker (the first 2 -> 3 epoch starts as "
              f"the new worker comes up, so it reads while the blocks move); "
              f"{rb['failed_blocks']} failed. The drain before 3 -> 2 took "
              f"{r['with']['drain_s']:.1f} s (not in the epoch times). Store bytes are the "
              "workers' own counts.", "", "![store MiB per epoch](elastic.png)", ""]
    return "\n".join(lines)


def plot(r: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [f"{e['phase']}\nepoch {e['epoch']}" for e in r["with"]["epochs"]]
    fig, ax = plt.subplots(figsize=(9, 4))
    xs = range(len(labels))
    for off, key, name in ((-0.2, "with", "rebalancing"), (0.2, "without", "without")):
        ax.bar([x + off for x in xs], [e["store_bytes"] / MiB for e in r[key]["epochs"]],
               0.4, label=name)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("MiB read from the store")
    ax.set_title(f"store reads per epoch, {r['dataset_bytes'] / MiB:.0f} MiB dataset")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.elastic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mib", type=int, default=96, help="dataset size in MiB")
    p.add_argument("--delay", type=float, default=0.02, help="store first-byte latency (s)")
    p.add_argument("--rate", default="16MiB",
                   help="rebalance_rate: slow enough that the first epoch meets the moves")
    p.add_argument("--out", help="write elastic.json, elastic.md and elastic.png here")
    a = p.parse_args(argv)
    from fluidcache.config import parse_size
    r = run(a.mib, a.delay, parse_size(a.rate))
    text = markdown(r, "python -m bench.elastic" + (f" --mib {a.mib}" if a.mib != 96 else ""))
    print(text)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "elastic.json"), "w") as f:
            json.dump(r, f, indent=2)
        with open(os.path.join(a.out, "elastic.md"), "w") as f:
            f.write(text)
        plot(r, os.path.join(a.out, "elastic.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
