"""The headline benchmark: training-style epochs against the alternatives, one run.

    python -m bench                 # full: 5,000 images, 1 GiB object, 3-node capacity run
    python -m bench --quick         # a few minutes; CI runs it as a smoke test (bytes right)
    python -m bench --out DIR       # where results.json, RESULTS.md and the plots go

A moto S3 endpoint sits behind a latency proxy (20 ms first byte per request by default,
`--delay`), used by every system alike. Systems: direct s3fs, fsspec simplecache::s3 and
filecache::s3, fluidcache (cold: epoch 1, warm after), and the same files in tmpfs (the
ceiling). Writes raw JSON, a Markdown table with the machine and the exact command, and
PNG plots (epoch time per system per epoch).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time

import xxhash

from . import capacity, report, systems, workloads


def _parquet_files(n_files: int, rows: int, rng: random.Random) -> tuple[dict, dict]:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    out, sums = {}, {"rows": 0, "a": 0.0, "c": 0.0}
    for i in range(n_files):
        cols = {k: [rng.random() for _ in range(rows)] for k in "abcdef"}
        buf = io.BytesIO()
        pq.write_table(pa.table(cols), buf, row_group_size=max(1, rows // 4))
        out[f"parquet/part-{i:03d}.parquet"] = buf.getvalue()
        sums["rows"] += rows
    return out, sums


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)),
                   help="where results.json, RESULTS.md and the plots go (default: bench/)")
    p.add_argument("--delay", type=float, default=0.02, help="first-byte latency (s)")
    p.add_argument("--no-capacity", action="store_true", help="skip workload 4")
    a = p.parse_args(argv)
    q = a.quick
    n_img, epochs = (200, 3) if q else (5000, 3)
    pq_files, pq_rows = (3, 5_000) if q else (8, 200_000)
    big_mib = 32 if q else 1024
    n_cap = 90 if q else 600

    from fluidcache import cluster as fc, config, connect
    from fluidcache.testing.proxy import LatencyProxy
    from fluidcache.testing.s3 import MotoServer

    rng = random.Random(0)
    work = tempfile.mkdtemp(prefix="fc-bench-")
    tmpfs = tempfile.mkdtemp(prefix="fc-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                             else None)
    images = {f"img/{i:05d}.jpg": rng.randbytes(rng.randint(80_000, 140_000))
              for i in range(n_img)}
    names = sorted(k.removeprefix("img/") for k in images)
    expected = [workloads.digest(images["img/" + n]) for n in names]
    tables, sums = _parquet_files(pq_files, pq_rows, rng)
    big = b"".join(rng.randbytes(1 << 20) for _ in range(big_mib))
    cap = {f"cap/{i:05d}.jpg": rng.randbytes(rng.randint(80_000, 140_000)) for i in range(n_cap)}
    objects = {**images, **tables, "big.bin": big, **cap}
    results: dict = {"command": " ".join(["python -m bench", *sys.argv[1:]]),
                     "quick": q, "delay_ms": a.delay * 1000, "machine": report.machine(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S"), "skipped": systems.SKIPPED}
    try:
        with MotoServer(log_path=os.path.join(work, "moto.log")) as moto, \
                LatencyProxy(moto.endpoint, a.delay) as store:
            s3 = moto.filesystem()
            s3.mkdir("bench")
            print(f"writing {len(objects)} objects ({sum(map(len, objects.values())) / 1e6:.0f}"
                  " MB) ...", flush=True)
            s3.pipe({f"bench/{k}": v for k, v in objects.items()})
            for k, v in objects.items():
                os.makedirs(os.path.join(tmpfs, os.path.dirname(k)), exist_ok=True)
                with open(os.path.join(tmpfs, k), "wb") as f:
                    f.write(v)
            home = os.path.join(work, "home")
            os.environ["FLUIDCACHE_HOME"] = home
            mem = os.path.join(tmpfs, ".tier")
            total = sum(map(len, objects.values()))
            cfg = config.load(tiers=[{"medium": "MEM", "path": mem,
                                      "quota": int(total * 1.3) + (64 << 20)}])
            fc.start(cfg, dashboard=False)
            try:
                client = connect()
                client.create_dataset("bench", {"/": "s3://bench"}, store.options())
                sys_list = [systems.Tmpfs(tmpfs), systems.S3(store.endpoint),
                            systems.FsspecCache(store.endpoint, "simplecache",
                                                os.path.join(work, "sc")),
                            systems.FsspecCache(store.endpoint, "filecache",
                                                os.path.join(work, "fc")),
                            systems.Fluid(client)]
                results["images"] = {"objects": n_img, "epochs": epochs}
                for s in sys_list:
                    s.cold()
                    print(f"[1] images: {s.name} ...", flush=True)
                    results["images"][s.name] = workloads.image_epochs(s, names, expected, epochs)
                results["parquet"] = {"files": pq_files, "rows": sums["rows"]}
                expect = {"rows": sums["rows"]}
                import pyarrow.parquet as pq
                tbl = pq.read_table([os.path.join(tmpfs, k) for k in sorted(tables)],
                                    columns=["a", "c"])
                expect.update({c: float(tbl.column(c).to_numpy().sum()) for c in ("a", "c")})
                for s in sys_list:
                    print(f"[2] parquet: {s.name} ...", flush=True)
                    results["parquet"][s.name] = workloads.parquet_scan(s, sorted(tables),
                                                                       ["a", "c"], expect)
                results["stream"] = {"mib": big_mib}
                digest = xxhash.xxh3_128_hexdigest(big)
                for s in sys_list:
                    print(f"[3] {big_mib} MiB stream: {s.name} ...", flush=True)
                    results["stream"][s.name] = workloads.stream(s, "big.bin", len(big), digest)
            finally:
                fc.stop()
            if not a.no_capacity:
                print("[4] capacity on a 3-node Ray cluster ...", flush=True)
                cap_names = sorted(k.removeprefix("cap/") for k in cap)
                results["capacity"] = capacity.run(
                    store.endpoint, store.options(), cap_names,
                    {n: workloads.digest(cap["cap/" + n]) for n in cap_names},
                    sum(map(len, cap.values())), 3, os.path.join(work, "home-cap"))
    finally:
        shutil.rmtree(tmpfs, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    md = report.markdown(results)
    report.write_keeping_sections(os.path.join(a.out, "RESULTS.md"), md)
    report.plots(results, a.out)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
