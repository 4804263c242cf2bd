"""Cold streams of a large object: fluid against direct s3fs, one run, ratios printed.

One object (256 MiB; --quick 64 MiB) read from the start to the end with read(8 MiB),
as model and shard loaders read, cold (the cache freed before every fluid round), by
fluid (a local cluster, one worker, 4 MiB blocks) and by direct s3fs (8 MiB blocks),
rounds interleaved, through three stores:
  - store model: s3rver behind a proxy that holds each response's first byte 20 ms and
    streams each connection at most 64 MB/s (one S3 connection: ~50-100 MB/s after tens
    of ms; more bandwidth only from more connections);
  - 20 ms: the same proxy without the rate cap;
  - bare: s3rver itself on loopback.
s3rver (objects kept as files, range GETs cost the range) rather than moto, whose range
GETs cost the whole object (see RESULTS.md). MB/s of the median round and of the worst;
every read's bytes checked (xxh3); the order alternates per round. s3fs reads one range
at a time on one connection (as `open().read()` does): the ratio is what a user gains
over plain s3fs, mostly from fluid's parallel block fetches across connections.

    python -m bench.stream            # 256 MiB, 3 rounds
    python -m bench.stream --quick    # 64 MiB, 2 rounds
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import tempfile
import time

import xxhash

STORES = {"store model (20 ms + 64 MB/s per connection)": (0.02, 64e6),
          "20 ms first-byte latency": (0.02, 0.0), "bare s3rver": None}
TARGETS = {"store model (20 ms + 64 MB/s per connection)": 3.0,
           "20 ms first-byte latency": 4.0, "bare s3rver": 0.9}


def _stream(f, want: int, size: int) -> None:
    h, n = xxhash.xxh3_64(), 0
    while chunk := f.read(8 << 20):
        h.update(chunk)
        n += len(chunk)
    assert n == size and h.intdigest() == want, "wrong bytes"


def s3rver_scratch() -> tuple[str, str] | None:
    """(a FLUIDCACHE_HOME, set for this process; a memory-tier directory) for a bench
    over s3rver, or None (said why) when s3rver is not installed."""
    from fluidcache.testing.s3 import s3rver_script
    if s3rver_script() is None:
        print("s3rver is not installed (.ci/run installs it into .ci/s3rver): nothing to do")
        return None
    home = tempfile.mkdtemp(prefix="fluidcache-bench-")
    os.environ["FLUIDCACHE_HOME"] = home
    mem = tempfile.mkdtemp(prefix="fc-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                           else None)
    return home, mem


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int)
    a = p.parse_args(argv)
    size = (64 if a.quick else 256) << 20
    rounds = a.rounds or (2 if a.quick else 3)

    import fsspec

    from fluidcache import cluster, config, connect
    from fluidcache.testing.proxy import LatencyProxy
    from fluidcache.testing.s3 import S3rverServer
    scratch = s3rver_scratch()
    if scratch is None:
        return 1
    home, mem = scratch
    body = os.urandom(size)
    want = xxhash.xxh3_64_intdigest(body)
    results: dict[str, dict[str, list[float]]] = {}
    try:
        with S3rverServer(os.path.join(home, "s3rver")) as store:
            s3 = store.filesystem()
            s3.mkdir("bench")
            s3.pipe_file("bench/big.bin", body)
            cluster.start(config.load(tiers=[{"medium": "MEM", "path": mem,
                                              "quota": f"{2 * size >> 20}MiB"}]),
                          dashboard=False)
            try:
                client = connect()
                for i, (label, shape) in enumerate(STORES.items()):
                    with contextlib.ExitStack() as stack:
                        endpoint = store.endpoint
                        if shape is not None:
                            endpoint = stack.enter_context(
                                LatencyProxy(store.endpoint, shape[0], rate=shape[1])).endpoint
                        opts = dict(store.options(), endpoint_url=endpoint)
                        client.create_dataset(f"s{i}", {"/": "s3://bench"}, opts)
                        direct = fsspec.filesystem(
                            "s3", key=opts["key"], secret=opts["secret"],
                            client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
                        got = results[label] = {"fluid": [], "s3fs": []}
                        for r in range(rounds):
                            for who in (("fluid", "s3fs") if r % 2 == 0 else
                                        ("s3fs", "fluid")):        # neither always first
                                if who == "fluid":
                                    client.free(f"fluid://s{i}")
                                    f = client.filesystem(skip_instance_cache=True).open(
                                        f"fluid://s{i}/big.bin", "rb")
                                else:
                                    f = direct.open("bench/big.bin", "rb",
                                                    block_size=8 << 20)
                                t0 = time.perf_counter()
                                with f:
                                    _stream(f, want, size)
                                got[who].append(size / (time.perf_counter() - t0) / 1e6)
                        client.remove_dataset(f"s{i}")
            finally:
                cluster.stop()
    finally:
        shutil.rmtree(mem, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
    print(f"\none {size >> 20} MiB object, cold, read(8 MiB) to the end, {rounds} rounds "
          "(MB/s of the median round, of the worst; ratio of the medians)")
    for label, got in results.items():
        f, s = got["fluid"], got["s3fs"]
        ratio = statistics.median(f) / statistics.median(s)
        print(f"  {label}\n    fluid {statistics.median(f):8.0f} {min(f):8.0f}   s3fs "
              f"{statistics.median(s):8.0f} {min(s):8.0f}   {ratio:5.2f}x  "
              f"(target >= {TARGETS[label]}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
