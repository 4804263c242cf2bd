"""Writes through fluid:// against direct s3fs: one run, peers interleaved, ratios printed.

Two workloads, through s3rver behind the 20 ms first-byte latency proxy (each response's
first byte held 20 ms, as from an in-region object store):
  - a checkpoint: one 1 GiB file (--quick 64 MiB) written with write(8 MiB) pieces and
    closed, as torch.save to a file object writes, by fluid (`through`, one local
    worker) and by s3fs (`open(..., "wb")`, its default 50 MiB parts);
  - small files: 2,000 files of 80-140 KB (--quick 200) written one after another by one
    writer (`pipe_file`), by fluid (`through`, `cache-through`, `async-through`) and by
    s3fs.
Each round's time runs from the first write to `close()` returning (the file is in the
store then: through and cache-through finish at close). async-through is timed twice
in the same round: "ack" when the last `close()` returns (the files are durable in the
worker's journal on its SSD tier, a directory on this machine's disk), and "in store"
when `sync` returns after it (every file uploaded); nothing of one round is still being
uploaded when the next peer starts. After each round the objects are read back from
the store and their bytes checked (xxh3), outside the timing. Reported: MB/s or files/s
of the median round and of the worst round (the slowest), and the ratio of medians.
The checkpoint rounds also time this machine's disk alone ("disk, write + fsync"): the
same bytes written in the same pieces to a file on the journal's disk, each piece's
writeback started as it is written (as the journal does), then fsync'd: what bounds
an async-through ack here.

    python -m bench.write            # 1 GiB x 3 rounds, 2,000 small files x 2 rounds
    python -m bench.write --quick    # 64 MiB x 2 rounds, 200 small files x 2 rounds
    python -m bench.write --out bench   # and write the 'write' section of RESULTS.md
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import time

import xxhash

PIECE = 8 << 20
TARGETS = {"checkpoint": 1.0, "small files": None}
WHERE = {"fluid through": "wt", "fluid cache-through": "wc", "fluid async-through": "wa"}
IN_STORE = {"s3fs": "bench/direct", "fluid through": "bench/through",
            "fluid cache-through": "bench/cache", "fluid async-through": "bench/async"}
ACK, STORED = "fluid async (ack)", "fluid async (in store)"
DISK = "disk, write + fsync"


def _disk(directory: str, body: memoryview) -> float:
    """Seconds to write `body` in PIECE writes to a new file in `directory` and fsync it,
    the disk told to start writing each piece as it comes, as the journal does (the
    disk's own pace: what a durable ack cannot beat by much)."""
    from fluidcache.worker.journal import _writeback
    path = os.path.join(directory, "bench-disk.tmp")
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for i in range(0, len(body), PIECE):
            f.write(body[i:i + PIECE])
            if _writeback is not None:
                f.flush()
                _writeback(f.fileno(), i, PIECE)
        f.flush()
        os.fsync(f.fileno())
    took = time.perf_counter() - t0
    os.unlink(path)
    return took


def _checkpoint(f, body: memoryview) -> None:
    with f:
        for i in range(0, len(body), PIECE):
            f.write(body[i:i + PIECE])


def _small(fs, prefix: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        fs.pipe_file(f"{prefix}/{name}", data)


def _check(s3, key: str, want: int) -> None:
    h = xxhash.xxh3_64()
    with s3.open(key, "rb", block_size=32 << 20) as f:
        while chunk := f.read(32 << 20):
            h.update(chunk)
    assert h.intdigest() == want, f"{key}: wrong bytes in the store"


def _line(label: str, unit: str, got: dict[str, list[float]], base: str) -> str:
    out = [f"  {label} ({unit}: median, worst; ratio of medians to {base})"]
    for who, xs in got.items():
        ratio = statistics.median(xs) / statistics.median(got[base])
        out.append(f"    {who:22s} {statistics.median(xs):9.1f} {min(xs):9.1f}   "
                   f"{ratio:5.2f}x")
    return "\n".join(out)


def _markdown(size: int, nfiles: int, rounds: int, small_rounds: int, ckpt: dict,
              files: dict) -> str:
    """The 'write' section of RESULTS.md: one table per workload, medians and worst."""
    from bench import report
    m = report.machine()
    out = ["## Writes (`python -m bench.write --out bench`)", "",
           f"Run {time.strftime('%Y-%m-%d %H:%M')} on {m['cpus']} CPUs. s3rver behind a "
           "20 ms first-byte latency proxy, one writer; the async-through journal on this "
           "machine's disk. "
           "Median = the median round, worst = the slowest round; ratios are of the "
           f"medians to direct s3fs. One run: {rounds} checkpoint rounds, "
           f"{min(rounds, small_rounds)} small-file rounds, peers interleaved.", ""]
    tables = []
    if size:
        tables.append((f"one {size >> 20} MiB checkpoint, write(8 MiB) then close", "MB/s",
                       ckpt, {"fluid through": ">= 1.0x", ACK: ">= 5x", STORED: ">= 1x"}))
    if nfiles:
        tables.append((f"{nfiles} files of 80-140 KB, pipe_file one after another",
                       "files/s", files, {}))
    for title, unit, got, targets in tables:
        base = statistics.median(got["s3fs"])
        out += [f"**{title}**", "", f"| writer | {unit} median | {unit} worst | vs s3fs "
                "| target |", "| --- | ---: | ---: | ---: | --- |"]
        for who, xs in got.items():
            out.append(f"| {who} | {statistics.median(xs):,.1f} | {min(xs):,.1f} | "
                       f"{statistics.median(xs) / base:.2f}x | {targets.get(who, '')} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, help="checkpoint rounds (default 3; --quick 2)")
    p.add_argument("--small-rounds", type=int, help="small-file rounds (default 2)")
    p.add_argument("--mib", type=int, help="checkpoint size (default 1024; --quick 64; "
                   "0: none)")
    p.add_argument("--files", type=int, help="small files (default 2000; --quick 200; 0: none)")
    p.add_argument("--out", help="write the results as the 'write' section of "
                   "OUT/RESULTS.md (e.g. bench)")
    a = p.parse_args(argv)
    size = (a.mib if a.mib is not None else (64 if a.quick else 1024)) << 20
    nfiles = a.files if a.files is not None else (200 if a.quick else 2000)
    rounds = a.rounds or (2 if a.quick else 3)
    small_rounds = a.small_rounds or 2

    import fsspec

    from fluidcache import cluster, config, connect
    from fluidcache.testing.proxy import LatencyProxy
    from fluidcache.testing.s3 import S3rverServer

    from .stream import s3rver_scratch
    scratch = s3rver_scratch()
    if scratch is None:
        return 1
    home, mem = scratch
    body = memoryview(os.urandom(size))
    want = xxhash.xxh3_64_intdigest(body)
    rnd = random.Random(7)
    small = {f"f{i:05d}.bin": rnd.randbytes(rnd.randint(80_000, 140_000))
             for i in range(nfiles)}
    ckpt: dict[str, list[float]] = {"s3fs": [], "fluid through": [], ACK: [], STORED: [],
                                    DISK: []}
    files: dict[str, list[float]] = {"s3fs": [], "fluid through": [],
                                     "fluid cache-through": [], ACK: [], STORED: []}
    try:
        with S3rverServer(os.path.join(home, "s3rver")) as store, \
                LatencyProxy(store.endpoint, 0.02) as proxy:
            store.filesystem().mkdir("bench")
            opts = dict(store.options(), endpoint_url=proxy.endpoint)
            cluster.start(config.load(tiers=[
                {"medium": "MEM", "path": mem, "quota": "1GiB"},
                {"medium": "SSD", "path": os.path.join(home, "ssd"), "quota": "4GiB"}]),
                dashboard=False)
            try:
                client = connect()
                client.create_dataset("wt", {"/": "s3://bench/through"}, opts,
                                      write_mode="through")
                client.create_dataset("wc", {"/": "s3://bench/cache"}, opts,
                                      write_mode="cache-through")
                client.create_dataset("wa", {"/": "s3://bench/async"}, opts,
                                      write_mode="async-through")
                direct = fsspec.filesystem("s3", key=opts["key"], secret=opts["secret"],
                                           client_kwargs={"endpoint_url": proxy.endpoint},
                                           skip_instance_cache=True)
                check = store.filesystem()
                fluid = client.filesystem(skip_instance_cache=True)
                peers = ["s3fs", "fluid through", "fluid async-through", DISK]
                for r in range(rounds):
                    order = peers if r % 2 == 0 else list(reversed(peers))
                    for who in order if size else ():   # none always first
                        if who == DISK:
                            ckpt[DISK].append(size / _disk(home, body) / 1e6)
                            continue
                        f = direct.open("bench/direct/ckpt.bin", "wb") if who == "s3fs" \
                            else fluid.open(f"fluid://{WHERE[who]}/ckpt.bin", "wb")
                        t0 = time.perf_counter()
                        _checkpoint(f, body)
                        t1 = time.perf_counter()
                        if who == "fluid async-through":
                            client.sync("fluid://wa/ckpt.bin")
                            ckpt[ACK].append(size / (t1 - t0) / 1e6)
                            ckpt[STORED].append(size / (time.perf_counter() - t0) / 1e6)
                        else:
                            ckpt[who].append(size / (t1 - t0) / 1e6)
                        _check(check, f"{IN_STORE[who]}/ckpt.bin", want)
                    if r >= small_rounds or not nfiles:
                        continue
                    speers = ["s3fs", *WHERE]
                    order = speers if r % 2 == 0 else list(reversed(speers))
                    for who in order:
                        fs, prefix = (direct, f"bench/direct/small{r}") if who == "s3fs" \
                            else (fluid, f"fluid://{WHERE[who]}/small{r}")
                        t0 = time.perf_counter()
                        _small(fs, prefix, small)
                        t1 = time.perf_counter()
                        if who == "fluid async-through":
                            client.sync(f"fluid://wa/small{r}")
                            files[ACK].append(nfiles / (t1 - t0))
                            files[STORED].append(nfiles / (time.perf_counter() - t0))
                        else:
                            files[who].append(nfiles / (t1 - t0))
                    for key in (f"{where}/small{r}" for where in IN_STORE.values()):
                        # by name: s3rver cannot page a listing past 1,000 keys
                        got = check.cat([f"{key}/{name}" for name in small])
                        assert {k.rsplit("/", 1)[1]: v for k, v in got.items()} == small, \
                            f"{key}: missing files or wrong bytes"
            finally:
                cluster.stop()
    finally:
        shutil.rmtree(mem, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
    print(f"\nwrites through s3rver behind a 20 ms first-byte latency proxy, one writer; "
          f"{rounds} checkpoint rounds, {min(rounds, small_rounds)} small-file rounds")
    if size:
        print(_line(f"one {size >> 20} MiB checkpoint, write(8 MiB) then close", "MB/s",
                    ckpt, "s3fs") + f"\n    (targets: fluid through >= "
              f"{TARGETS['checkpoint']}x; async ack >= 5x, async in store >= 1x)")
    if nfiles:
        print(_line(f"{nfiles} files of 80-140 KB, pipe_file one after another", "files/s",
                    files, "s3fs"))
    if a.out:
        from bench import report
        os.makedirs(a.out, exist_ok=True)
        report.put_section(os.path.join(a.out, "RESULTS.md"), "write",
                           _markdown(size, nfiles, rounds, small_rounds, ckpt, files))
        print(f"\nwrote the write section of {os.path.join(a.out, 'RESULTS.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
