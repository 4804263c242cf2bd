"""The read path against its peers, one run, same client loop, ratios printed.

Starts a moto S3 endpoint and a local fluidcache cluster (temporary home), writes N
objects of 80-140 KB and one large object, then measures with the same loop:
  - cold, as a user reads: one reader, one file after the other, fluid `cat_file` and
    direct s3fs `cat_file` interleaved file by file (so noise hits both alike); each
    round after the first frees the cache first. Per-file latency (median, p99, worst)
    and epoch time (median round, worst round);
  - warm files/s: fluid `cat_file`, fluid `open().read()`, fsspec `simplecache::s3`,
    direct s3fs, and the same files in tmpfs with plain `open().read()` (the ceiling);
    median round and worst round;
  - the large object warm: fluid (short-circuit) and fluid over TCP (no short-circuit)
    against tmpfs `readinto`, in GB/s, median and worst round; and read(8 MiB) to the
    end, as model and shard loaders read, against simplecache::s3 and tmpfs.
simplecache keeps its files in the same tmpfs as fluid's memory tier and the ceiling's
files (like for like: on this machine a disk's page cache reads 8 MiB chunks ~1.6x
faster than /dev/shm, which would compare the media, not the code).
Every read is checked against the bytes written.

    python -m bench.read_path            # 2,000 objects, 256 MiB object
    python -m bench.read_path --quick    # 300 objects, 64 MiB object
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import tempfile
import time

import xxhash

from .workloads import stage, tensor_like


TARGETS = {"warm fluid cat_file": "target >= 0.8x", "warm fluid open().read()": "target >= 0.6x",
           "fluid open().readinto": "target >= 0.7x",
           "fluid read(8 MiB) dropped": "target >= 0.7x",
           "fluid readinto over TCP": "target >= 1.5 GB/s"}


def _url_read(url: str, opts: dict) -> bytes:
    import fsspec
    with fsspec.open(url, "rb", **opts) as f:
        return f.read()


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def _p(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _cold(client, files, names, direct, rounds) -> dict:
    """One reader, file after file, fluid and s3fs interleaved; the cache freed before
    every round but the first (the master's listings stay: metadata is warm then)."""
    lat = {"fluid": [], "s3fs": []}
    epochs = {"fluid": [], "s3fs": []}
    for r in range(rounds):
        if r:
            client.free("fluid://bench/img", force=True)
        fs = client.filesystem(skip_instance_cache=True)
        tot = {"fluid": 0.0, "s3fs": 0.0}
        for n in names:
            for who, read in (("fluid", lambda fs=fs, n=n: fs.cat_file(f"fluid://bench/{n}")),
                              ("s3fs", lambda n=n: direct.cat_file(f"bench/{n}"))):
                t0 = time.perf_counter()
                data = read()
                dt = time.perf_counter() - t0
                assert data == files[n], (who, n)
                lat[who].append(dt)
                tot[who] += dt
        for who in tot:
            epochs[who].append(tot[who])
    return {"lat": lat, "epochs": epochs}


def _timed(fn, names) -> float:
    t0 = time.perf_counter()
    for n in names:
        fn(n)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--files", type=int)
    p.add_argument("--big-mib", type=int)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    n_files = a.files or (300 if a.quick else 2000)
    big_mib = a.big_mib or (64 if a.quick else 256)

    from fluidcache import cluster, config, connect
    from fluidcache.testing.s3 import MotoServer
    import fsspec

    home = tempfile.mkdtemp(prefix="fluidcache-bench-")
    os.environ["FLUIDCACHE_HOME"] = home
    rng = random.Random(0)
    files = {f"img/{i:05d}.jpg": rng.randbytes(rng.randint(80_000, 140_000))
             for i in range(n_files)}
    big = b"".join(rng.randbytes(1 << 20) for _ in range(big_mib))
    names = sorted(files)
    tmpfs = tempfile.mkdtemp(prefix="fc-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                             else None)
    with MotoServer(log_path=os.path.join(home, "moto.log")) as moto:
        s3 = moto.filesystem()
        stage(s3, tmpfs, files, big)
        cfg = config.load(tiers=[{"medium": "MEM", "path": os.path.join(tmpfs, "tier"),
                                  "quota": f"{2 * (big_mib + 400)}MiB"}])
        cluster.start(cfg, dashboard=False)
        try:
            client = connect()
            client.create_dataset("bench", {"/": "s3://bench"}, moto.options())
            fs = client.filesystem()
            fs_tcp = client.filesystem(short_circuit=False, skip_instance_cache=True)
            fs.ls("fluid://bench/img")
            fs_tcp.ls("fluid://bench/img")

            def check(read):
                def go(n):
                    assert read(n) == files[n], n
                return go

            direct = moto.filesystem()
            cold = _cold(client, files, names, direct, a.rounds)
            fs.cat_file(f"fluid://bench/{names[0]}")
            s3_options = dict(key="testing", secret="testing",
                              client_kwargs={"endpoint_url": moto.endpoint})
            sc = fsspec.filesystem("simplecache", target_protocol="s3",
                                   target_options=s3_options,
                                   cache_storage=os.path.join(tmpfs, "simplecache"))
            _timed(check(lambda n: sc.cat_file(f"bench/{n}")), names)             # fill it

            def fluid_open(n):
                with fs.open(f"fluid://bench/{n}", "rb") as f:
                    return f.read()

            def plain(n):
                with open(os.path.join(tmpfs, n), "rb") as f:
                    return f.read()

            warm = {"tmpfs open().read()": plain,
                    "warm fluid cat_file": lambda n: fs.cat_file(f"fluid://bench/{n}"),
                    "warm fluid open().read()": fluid_open,
                    "warm fluid over TCP": lambda n: fs_tcp.cat_file(f"fluid://bench/{n}"),
                    "warm simplecache::s3": lambda n: sc.cat_file(f"bench/{n}"),
                    # what a script that opens URLs does: fsspec's URL handling per call
                    "warm fsspec.open(fluid://)": lambda n: _url_read(f"fluid://bench/{n}", {}),
                    "warm fsspec.open(simplecache)": lambda n: _url_read(
                        f"simplecache::s3://bench/{n}", sc_url_opts)}
            sc_url_opts = dict(s3=dict(key="testing", secret="testing",
                                       client_kwargs={"endpoint_url": moto.endpoint}),
                               simplecache=dict(cache_storage=os.path.join(tmpfs, "simplecache")))
            times: dict[str, list[float]] = {k: [] for k in warm}
            for _ in range(a.rounds):       # interleaved rounds: noise hits every system
                for k, fn in warm.items():
                    times[k].append(_timed(check(fn), names))

            lat, ep = cold["lat"], cold["epochs"]
            print(f"\ncold, one reader, {n_files} objects of 80-140 KB, {a.rounds} rounds "
                  "(fluid and s3fs interleaved file by file; the cache freed between rounds)")
            print(f"  {'per file, ms':<30}{'median':>10}{'p99':>10}{'worst':>10}")
            for who in ("fluid", "s3fs"):
                print(f"  {who:<30}{_median(lat[who]) * 1e3:>10.2f}"
                      f"{_p(lat[who], 0.99) * 1e3:>10.2f}{max(lat[who]) * 1e3:>10.2f}")
            print(f"  epoch, s: fluid median {_median(ep['fluid']):.2f} worst "
                  f"{max(ep['fluid']):.2f}; s3fs median {_median(ep['s3fs']):.2f} worst "
                  f"{max(ep['s3fs']):.2f}")
            per_file = _median(lat['fluid']) / _median(lat['s3fs'])
            print(f"  fluid / s3fs: median file {per_file:.2f}x,"
                  f" median epoch {_median(ep['fluid']) / _median(ep['s3fs']):.2f}x, worst epoch "
                  f"{max(ep['fluid']) / max(ep['s3fs']):.2f}x  (target <= 1.0x)")

            print(f"\nwarm, {n_files} objects, {a.rounds} rounds (files/s of the median round, "
                  "of the worst round; ratio of the median to the tmpfs ceiling's median)")
            ceiling = n_files / _median(times["tmpfs open().read()"])
            for k in warm:
                rate, worst = n_files / _median(times[k]), n_files / max(times[k])
                print(f"  {k:<30}{rate:>10,.0f}{worst:>10,.0f}{rate / ceiling:>8.2f}x  "
                      f"{TARGETS.get(k, '')}")
            warm_cat = _median(times['warm fluid cat_file'])
            print(f"  warm fluid cat_file vs simplecache (medians): "
                  f"{_median(times['warm simplecache::s3']) / warm_cat:.1f}x; "
                  f"vs cold s3fs: "
                  f"{_median(ep['s3fs']) / _median(times['warm fluid cat_file']):.0f}x")

            digest = hashlib.sha256(big).hexdigest()
            assert hashlib.sha256(fs.cat_file("fluid://bench/big.bin")).hexdigest() == digest
            buf = tensor_like(len(big))   # every readinto row reuses it

            def bytes_read(reader):
                def go():
                    t0 = time.perf_counter()
                    data = reader.cat_file("fluid://bench/big.bin")
                    dt = time.perf_counter() - t0
                    assert hashlib.sha256(data).hexdigest() == digest
                    return len(data), dt
                return go

            def into(reader):
                def go():
                    buf[:] = bytes(len(buf))         # nothing of an earlier read is left
                    t0 = time.perf_counter()
                    with reader.open("fluid://bench/big.bin", "rb") as f:
                        n = f.readinto(buf)
                    dt = time.perf_counter() - t0
                    assert n == len(big) and hashlib.sha256(buf).hexdigest() == digest
                    return n, dt
                return go

            want_xxh = xxhash.xxh3_64_intdigest(big)

            def chunked(open_big, keep: bool):
                """read(8 MiB) until the end: each chunk hashed and dropped (a stream
                consumed as it comes), or kept (a model loader: every chunk stays, so
                each read gets fresh pages); the same xxh3 pass for every system."""
                def go():
                    parts, h, n = [], xxhash.xxh3_64(), 0
                    t0 = time.perf_counter()
                    with open_big() as f:
                        while chunk := f.read(8 << 20):
                            h.update(chunk)
                            n += len(chunk)
                            if keep:
                                parts.append(chunk)
                    dt = time.perf_counter() - t0
                    assert h.intdigest() == want_xxh and n == len(big)
                    return n, dt
                return go

            sc.cat_file("bench/big.bin")                         # simplecache: warm

            def tmpfs_read():
                t0 = time.perf_counter()
                with open(os.path.join(tmpfs, "big.bin"), "rb") as f:
                    n = len(f.read())
                return n, time.perf_counter() - t0

            def tmpfs_into():
                t0 = time.perf_counter()
                with open(os.path.join(tmpfs, "big.bin"), "rb", buffering=0) as f:
                    n = f.readinto(buf)
                return n, time.perf_counter() - t0

            rows = {"tmpfs readinto": tmpfs_into, "fluid open().readinto": into(fs),
                    "fluid readinto over TCP": into(fs_tcp), "tmpfs open().read()": tmpfs_read,
                    "fluid cat_file": bytes_read(fs), "fluid cat_file over TCP": bytes_read(fs_tcp),
                    }
            opens = {"tmpfs": lambda: open(os.path.join(tmpfs, "big.bin"), "rb"),
                     "simplecache": lambda: sc.open("bench/big.bin", "rb"),
                     "fluid": lambda: fs.open("fluid://bench/big.bin", "rb"),
                     "fluid over TCP": lambda: fs_tcp.open("fluid://bench/big.bin", "rb")}
            for keep in (False, True):
                for who, opener in opens.items():
                    rows[f"{who} read(8 MiB) {'kept' if keep else 'dropped'}"] = \
                        chunked(opener, keep)
            gbs: dict[str, list[float]] = {k: [] for k in rows}
            for r in range(a.rounds):
                order = list(rows)
                random.Random(r).shuffle(order)     # no row always first or last
                for k in order:
                    n, dt = rows[k]()        # each read is checked after its timing
                    gbs[k].append(n / dt / 1e9)
            print(f"\none {big_mib} MiB object, warm, {a.rounds} rounds (GB/s of the median "
                  "round, of the worst; ratio of medians to tmpfs readinto; cat_file makes a new "
                  "bytes object, so tmpfs open().read() is its ceiling)")
            top = _median(gbs["tmpfs readinto"])
            for k, v in gbs.items():
                print(f"  {k:<30}{_median(v):>10.2f}{min(v):>10.2f}{_median(v) / top:>8.2f}x  "
                      f"{TARGETS.get(k, '')}")
            for how in ("dropped", "kept"):
                ratio = _median(gbs[f"fluid read(8 MiB) {how}"]) / \
                    _median(gbs[f"simplecache read(8 MiB) {how}"])
                print(f"  fluid / simplecache read(8 MiB) {how}, medians: {ratio:.2f}x "
                      "(target >= 1.0x)")
        finally:
            cluster.stop()
            shutil.rmtree(tmpfs, ignore_errors=True)
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
