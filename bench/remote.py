"""Remote reads: the data path between nodes, against the same processes reading tmpfs.

One run, ratios printed. Part 1, one node (a local cluster, its cache loaded):
  - 1/4/8 reader processes, each reading its share of N objects of 80-140 KB with
    `cat_file` over TCP (short-circuit off: every block from a worker's data server),
    against the same processes reading the same files from tmpfs with plain
    `open().read()`, rounds interleaved; files/s of the median round and of the worst;
    the worker's CPU seconds (actor and serving processes) per GB served;
  - the same processes with `cat` of 64 paths at once (batch reads, `readv`);
  - the floor of a request per file on this machine: the same processes asking two
    bare server processes (`floor.py`: a name in, its size and `sendfile` of the tmpfs
    file out, a thread per connection, no framing, checks or accounting) for each file;
    what no per-file protocol written in Python gets past here;
  - one large object read with `readinto` over TCP against tmpfs `readinto`;
  - the latency of one 128 KB remote read (median, p99, worst of 2,000);
  - with --serve-processes 0 the worker's own server answers (wave 1's path).
Part 2 (--nodes 3): a Ray cluster of 3 nodes on this machine (`ray.cluster_utils`), each
node its own machine identity (FLUIDCACHE_MACHINE_ID), so short-circuit reads apply
only to a node's own blocks; the dataset loaded, partitioned over the 3 workers; a
DataLoader epoch (2 worker processes) on every node at once, against one DataLoader
epoch in part 1's single node where every block is local (short-circuit). Samples/s of
all nodes together vs the single node's, since here the 3 nodes share 2 cores.
Every read is checked (xxh3 of every file against the bytes written).

    python -m bench.remote                # 2,000 objects, 256 MiB object, 1/4/8 readers
    python -m bench.remote --quick        # 400 objects, 64 MiB, 1/4 readers
    python -m bench.remote --out bench    # and write the section of bench/RESULTS.md
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import shutil
import statistics
import tempfile
import time

import xxhash

from .floor import FloorClient, FloorServers
from .workloads import stage, tensor_like

_CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids) -> float:
    """User + system CPU seconds of processes so far (0 for one that is gone)."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _CLK
        except (OSError, IndexError, ValueError):
            pass
    return total


def _reader(conn, names, digests, tmpfs, home, floor_port) -> None:
    """A reader process: told a mode, reads its share, answers (seconds, files)."""
    os.environ["FLUIDCACHE_HOME"] = home
    from fluidcache import connect
    fs = connect().filesystem(short_circuit=False, skip_instance_cache=True)
    fs.ls("fluid://bench/img")
    bare = FloorClient(floor_port)
    conn.send("ready")

    def check(n, data):
        if xxhash.xxh3_64_intdigest(data) != digests[n]:
            raise AssertionError(f"wrong bytes for {n}")

    while (mode := conn.recv()) is not None:
        t0 = time.perf_counter()
        if mode == "tmpfs":
            for n in names:
                with open(os.path.join(tmpfs, n), "rb") as f:
                    check(n, f.read())
        elif mode == "tcp":
            for n in names:
                check(n, fs.cat_file(f"fluid://bench/{n}"))
        elif mode == "floor":
            for n in names:
                check(n, bare.get(n))
        elif mode == "batch":
            for i in range(0, len(names), 64):
                got = fs.cat([f"fluid://bench/{n}" for n in names[i:i + 64]])
                for p, data in got.items():
                    check(p.split("/", 1)[1], data)
        conn.send(time.perf_counter() - t0)


class Readers:
    def __init__(self, n, names, digests, tmpfs, home, floor_port):
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for i in range(n):
            mine, theirs = ctx.Pipe()
            share = names[i::n]
            p = ctx.Process(target=_reader, args=(theirs, share, {k: digests[k] for k in share},
                                                  tmpfs, home, floor_port), daemon=True)
            p.start()
            self.conns.append(mine)
            self.procs.append(p)
        for c in self.conns:
            if c.recv() != "ready":
                raise RuntimeError("a reader did not start")

    def run(self, mode) -> float:
        for c in self.conns:
            c.send(mode)
        return max(c.recv() for c in self.conns)

    def close(self):
        for c in self.conns:
            c.send(None)
        for p in self.procs:
            p.join(30)


MODES = {"tmpfs": "tmpfs open().read()", "floor": "bare request per file (floor)",
         "tcp": "fluid over TCP",
         "batch": "fluid over TCP, cat of 64"}


def _p(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def part1(a, files, big, names, digests, tmpfs, home, moto) -> dict:
    from fluidcache import cluster, config, connect
    cfg = config.load(tiers=[{"medium": "MEM", "path": os.path.join(tmpfs, "tier"),
                              "quota": f"{2 * (a.big_mib + 400)}MiB"}],
                      serve_processes=a.serve_processes)
    cluster.start(cfg, dashboard=False)
    floor = FloorServers(tmpfs)
    out: dict = {"files": []}
    try:
        client = connect()
        client.create_dataset("bench", {"/": "s3://bench"}, moto.options())
        client.load("fluid://bench")
        w = client.status()["workers"][0]
        server_pids = [w["pid"], *w.get("serve_pids", [])]
        print(f"worker: serving processes {len(server_pids) - 1} "
              f"({'serve' in w and w['serve'] or 'none: the worker answers'})")
        n_files = len(names)
        print(f"\n{n_files} objects of 80-140 KB, warm, {a.rounds} rounds interleaved "
              "(files/s of all readers together: median round, worst round; ratio of the "
              "medians to tmpfs with as many processes; worker CPU s per GB served)")
        for procs in a.procs:
            readers = Readers(procs, names, digests, tmpfs, home, floor.port)
            times = {"tmpfs": [], "floor": [], "tcp": [], "batch": []}
            cpu = {"floor": [], "tcp": [], "batch": []}
            try:
                for r in range(a.rounds):
                    order = list(times)
                    random.Random(r).shuffle(order)       # no mode always first or last
                    for mode in order:
                        pids = floor.pids if mode == "floor" else server_pids
                        c0 = cpu_seconds(pids)
                        times[mode].append(readers.run(mode))
                        if mode in cpu:
                            cpu[mode].append(cpu_seconds(pids) - c0)
            finally:
                readers.close()
            gb = sum(len(v) for k, v in files.items() if k.startswith("img/")) / 1e9
            top = n_files / statistics.median(times["tmpfs"])
            for mode, label in MODES.items():
                rate = n_files / statistics.median(times[mode])
                worst = n_files / max(times[mode])
                per_gb = statistics.median(cpu[mode]) / gb if mode in cpu else None
                extra = f"{per_gb:8.2f} CPU s/GB" if per_gb is not None else ""
                print(f"  {procs} proc  {label:<28}{rate:>10,.0f}{worst:>10,.0f}"
                      f"{rate / top:>8.2f}x {extra}")
                out["files"].append({"procs": procs, "mode": mode, "median": rate,
                                     "worst": worst, "ratio": rate / top,
                                     "cpu_s_per_gb": per_gb})
        fs = client.filesystem(short_circuit=False, skip_instance_cache=True)
        # one large object, readinto, over TCP vs tmpfs
        buf = tensor_like(len(big))   # every readinto row reuses it
        want = xxhash.xxh3_64_intdigest(big)
        gbs = {"tmpfs readinto": [], "fluid readinto over TCP": []}
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            with open(os.path.join(tmpfs, "big.bin"), "rb", buffering=0) as f:
                f.readinto(buf)
            gbs["tmpfs readinto"].append(len(big) / (time.perf_counter() - t0) / 1e9)
            buf[:] = bytes(len(buf))             # nothing of the tmpfs read is left
            t0 = time.perf_counter()
            with fs.open("fluid://bench/big.bin", "rb") as f:
                n = f.readinto(buf)
            gbs["fluid readinto over TCP"].append(n / (time.perf_counter() - t0) / 1e9)
            assert n == len(big) and xxhash.xxh3_64_intdigest(buf) == want
        print(f"\none {a.big_mib} MiB object, warm (GB/s: median round, worst round; "
              "ratio of medians)")
        top = statistics.median(gbs["tmpfs readinto"])
        for k, v in gbs.items():
            print(f"  {k:<36}{statistics.median(v):>8.2f}{min(v):>8.2f}"
                  f"{statistics.median(v) / top:>8.2f}x")
        out["stream"] = {k: {"median": statistics.median(v), "worst": min(v)}
                         for k, v in gbs.items()}
        # one 128 KB remote read, one after the other
        one = "fluid://bench/k128.bin"
        assert fs.cat_file(one) == files["k128.bin"]
        lat = []
        for _ in range(2000):
            t0 = time.perf_counter()
            fs.cat_file(one)
            lat.append(time.perf_counter() - t0)
        print(f"\none 128 KB read over TCP, 2,000 times (ms): median "
              f"{statistics.median(lat) * 1e3:.3f}, p99 {_p(lat, 0.99) * 1e3:.3f}, "
              f"worst {max(lat) * 1e3:.3f}")
        out["latency_ms"] = {"median": statistics.median(lat) * 1e3,
                             "p99": _p(lat, 0.99) * 1e3, "worst": max(lat) * 1e3}
        local = connect().filesystem(skip_instance_cache=True)
        out["single_epoch"] = [_epoch(local, digests) for _ in range(a.rounds)]
        print(f"\nDataLoader epoch on one node, short-circuit (every block local): "
              f"{statistics.median(out['single_epoch']):,.0f} samples/s median, "
              f"{min(out['single_epoch']):,.0f} worst of {a.rounds}")
    finally:
        floor.stop()
        cluster.stop()
    return out


def _digests(batch) -> list[int]:
    return [xxhash.xxh3_64_intdigest(x) for x in batch]


def _epoch(fs, digests: dict, workers: int = 2) -> float:
    """Samples/s of one DataLoader epoch (batch 32, `workers` processes, shuffled) over
    the dataset's images; every sample's xxh3 checked against `digests` (by path under
    fluid://bench/), all samples of the epoch together."""
    import torch.utils.data as tud
    from fluidcache.integrations.torch import FluidDataset
    ds = FluidDataset("fluid://bench/img", filesystem=fs)
    loader = tud.DataLoader(ds, batch_size=32, num_workers=workers, shuffle=False,
                            sampler=tud.RandomSampler(ds), collate_fn=_digests)
    t0 = time.perf_counter()
    got = [d for batch in loader for d in batch]
    dt = time.perf_counter() - t0
    assert sorted(got) == sorted(digests[p.split("/", 1)[1]] for p in ds.paths), \
        "wrong bytes in the epoch"
    return len(ds) / dt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--files", type=int)
    p.add_argument("--big-mib", type=int)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--procs", default=None, help="reader process counts, e.g. 1,4,8")
    p.add_argument("--serve-processes", type=int, default=-1)
    p.add_argument("--nodes", type=int, default=3, help="part 2's nodes (0: skip part 2)")
    p.add_argument("--out", default=None, help="write the results as the 'remote' section "
                   "of OUT/RESULTS.md with a plot (e.g. bench)")
    a = p.parse_args(argv)
    a.files = a.files or (400 if a.quick else 2000)
    a.big_mib = a.big_mib or (64 if a.quick else 256)
    a.procs = [int(x) for x in (a.procs or ("1,4" if a.quick else "1,4,8")).split(",")]

    from fluidcache.testing.s3 import MotoServer
    home = tempfile.mkdtemp(prefix="fluidcache-bench-")
    os.environ["FLUIDCACHE_HOME"] = home
    rng = random.Random(0)
    files = {f"img/{i:05d}.jpg": rng.randbytes(rng.randint(80_000, 140_000))
             for i in range(a.files)}
    files["k128.bin"] = rng.randbytes(128 * 1024)
    big = b"".join(rng.randbytes(1 << 20) for _ in range(a.big_mib))
    names = sorted(k for k in files if k.startswith("img/"))
    digests = {k: xxhash.xxh3_64_intdigest(v) for k, v in files.items()}
    tmpfs = tempfile.mkdtemp(prefix="fc-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                             else None)
    try:
        with MotoServer(log_path=os.path.join(home, "moto.log")) as moto:
            s3 = moto.filesystem()
            stage(s3, tmpfs, files, big)
            out = part1(a, files, big, names, digests, tmpfs, home, moto)
            if a.nodes:
                from bench.remote_nodes import part2
                out["nodes"], out["multi_epoch"] = a.nodes, part2(a, moto, home, digests)
                multi, single = (statistics.median(out[k])
                                 for k in ("multi_epoch", "single_epoch"))
                print(f"\nDataLoader epoch on {a.nodes} nodes at once, {multi:,.0f} samples/s "
                      f"all together (median of {a.rounds}, worst {min(out['multi_epoch']):,.0f}"
                      f"): {multi / single:.2f}x the single node's short-circuit epoch "
                      "(target >= 0.7x)")
    finally:
        shutil.rmtree(tmpfs, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
    if a.out:
        from bench import report
        os.makedirs(a.out, exist_ok=True)
        out.update(serve_processes=a.serve_processes, objects=a.files, big_mib=a.big_mib,
                   rounds=a.rounds, machine=report.machine())
        name = "remote" if a.serve_processes else "remote-serve0"
        report.put_section(os.path.join(a.out, "RESULTS.md"), name,
                           report.remote_markdown(out, report.remote_plot(out, a.out)))
        print(f"\nwrote the remote section of {os.path.join(a.out, 'RESULTS.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
