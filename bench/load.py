"""`load` against reading the same files one by one with s3fs, in one run.

Starts a moto S3 endpoint behind a latency proxy (20 ms first byte per request by
default, like an in-region object store; both sides read through it) and a local
fluidcache cluster (temporary home), writes N
objects of 80-140 KB, then times: s3fs `cat_file` of each object in turn (what a job
does without a cache), and `client.load()` of the whole directory (the workers fetch in
parallel, bounded per worker). Prints both and the ratio; checks that afterwards `du`
shows every byte cached and a read pass is byte-identical.

    python -m bench.load            # 2,000 objects
    python -m bench.load --files 300
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import tempfile
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--delay", type=float, default=0.02,
                   help="first-byte latency the proxy adds per request (default 0.02 s)")
    a = p.parse_args(argv)

    from fluidcache import cluster, config, connect
    from fluidcache.testing.proxy import LatencyProxy
    from fluidcache.testing.s3 import MotoServer

    home = tempfile.mkdtemp(prefix="fluidcache-bench-")
    os.environ["FLUIDCACHE_HOME"] = home
    rng = random.Random(0)
    files = {f"img/{i:05d}.jpg": rng.randbytes(rng.randint(80_000, 140_000))
             for i in range(a.files)}
    mem = tempfile.mkdtemp(prefix="fc-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                           else None)
    with MotoServer(log_path=os.path.join(home, "moto.log")) as moto, \
            LatencyProxy(moto.endpoint, a.delay) as store:
        s3 = moto.filesystem()
        s3.mkdir("bench")
        print(f"writing {a.files} objects ...", flush=True)
        s3.pipe({f"bench/{k}": v for k, v in files.items()})
        cfg = config.load(tiers=[{"medium": "MEM", "path": mem, "quota": "1GiB"}])
        cluster.start(cfg, dashboard=False)
        try:
            client = connect()
            client.create_dataset("bench", {"/": "s3://bench"}, store.options())
            direct = store.filesystem()
            t0 = time.perf_counter()
            for n in sorted(files):
                assert direct.cat_file(f"bench/{n}") == files[n]
            t_s3 = time.perf_counter() - t0
            t0 = time.perf_counter()
            st = client.load("fluid://bench/img")
            t_load = time.perf_counter() - t0
            assert st["state"] == "done", st
            du = client.du("fluid://bench/img")
            assert du["cached_bytes"] == du["total_bytes"] == sum(map(len, files.values()))
            fs = client.filesystem()
            for n, body in files.items():
                got = fs.cat_file(f"fluid://bench/{n}")
                assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest(), n
            mb = sum(map(len, files.values())) / 1e6
            print(f"\n{a.files} objects, {mb:.0f} MB, {a.delay * 1000:.0f} ms first-byte latency")
            print(f"  s3fs cat_file one by one   {t_s3:8.2f} s  {a.files / t_s3:8.0f} files/s")
            print(f"  fluidcache load            {t_load:8.2f} s  {a.files / t_load:8.0f} files/s")
            print(f"  load is {t_s3 / t_load:.1f}x faster (target >= 3x); every byte checked")
        finally:
            cluster.stop()
            shutil.rmtree(mem, ignore_errors=True)
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
