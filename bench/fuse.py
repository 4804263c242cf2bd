"""The mount against the fsspec client and tmpfs, one run, ratios printed.

Starts a moto S3 endpoint and a local fluidcache cluster (temporary home), writes N
objects of 80-140 KB and one large object, caches them all (warm), mounts the dataset
with `fluidcache mount`, then measures with the same loop in 1 and 4 reader processes
(each its share of the files, all started together):
  - small files, plain `open().read()` of every file: from tmpfs (the ceiling), through
    the fsspec client (`fluid://`, short-circuit), through the mount with the kernel's
    page cache dropped before the round (every byte through the daemon), and through
    the mount with the pages the last round left (what a second epoch on one node sees),
    and a FUSE filesystem that does nothing but hand out bytes it holds in memory
    (mfusepy, multithreaded as the mount is; page cache dropped and kept: the ceiling
    of a Python FUSE daemon on this machine, whatever it serves from), and the same in C
    (bench/fuse_floor.c, libfuse's multithreaded loop, compiled here when gcc and
    Debian's libfuse3-dev are there; else its rows are left out and the reason printed),
    dropped and kept: what any FUSE daemon costs on this machine, whatever its language;
  - the large file, read(8 MiB) to the end in one process: tmpfs, the fsspec client,
    the mount first (page cache dropped), the mount again (page cache kept).
Figures: the median round and the worst round (each round reads everything once), and
the ratio of medians to the named reference. Every read is checked against its digest.

    python -m bench.fuse            # 2,000 objects, 256 MiB object, 5 rounds
    python -m bench.fuse --quick    # 300 objects, 64 MiB object
    python -m bench.fuse --out bench   # and write the 'fuse' section of bench/RESULTS.md
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

import xxhash

from .workloads import stage

CHUNK = 8 << 20
TARGETS = {"mount, page cache dropped": "target >= 0.5x the fsspec client",
           "big: mount, page cache kept": "target >= 0.5x tmpfs"}
FLOOR = "do-nothing FUSE fs, dropped"
FLOOR_KEPT = "do-nothing FUSE fs, kept"
CFLOOR = "do-nothing FUSE fs in C, dropped"
CKEPT = "do-nothing FUSE fs in C, kept"


def _floor_daemon(mp: str, root: str, timeout: float) -> None:
    """A FUSE filesystem over the bytes of `root`'s files, held in memory (no cache,
    no network): what libfuse, mfusepy and the kernel cost alone, with the kernel
    options the mount has (`timeout`: its entry and attribute timeouts)."""
    import stat

    import mfusepy

    from fluidcache.posix.ops import MAX_READ

    held = {}
    for d, _, fs in os.walk(os.path.join(root, "img")):      # the small files only
        for f in fs:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                held["/" + os.path.relpath(p, root)] = fh.read()
    dirs = {"/"} | {os.path.dirname(k) for k in held}

    class Floor(mfusepy.Operations):
        use_ns = True

        def init_with_config(self, conn, config):    # as the mount's (posix/ops.py)
            if config is not None:
                config.entry_timeout = config.attr_timeout = timeout
                config.negative_timeout = min(timeout, 1.0)
            if conn is not None:
                conn.max_read = conn.max_readahead = MAX_READ

        def getattr(self, path, fh=None):
            if path in dirs:
                return {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2}
            if path not in held:
                raise mfusepy.FuseOSError(2)
            return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1,
                    "st_size": len(held[path])}

        def readdir(self, path, fh):
            return [".", ".."] + sorted({k[len(path.rstrip("/")) + 1:].split("/")[0]
                                         for k in held if k.startswith(path.rstrip("/") + "/")})

        def open(self, path, fi):
            fi.keep_cache = 1            # the bytes never change: pages kept across opens
            return 0

        def read(self, path, size, offset, fi):
            return held[path][offset:offset + size]

        def release(self, path, fi):
            return 0

    mfusepy.FUSE(Floor(), mp, foreground=True, raw_fi=True, ro=True, fsname="floor",
                 max_read=MAX_READ, default_permissions=True)


READING = (
    "How to read the floors: a do-nothing filesystem pays only the kernel's round trips "
    "and its binding's. Both floors run with the mount's kernel options (entry and "
    "attribute timeouts from the dataset, max_read, default_permissions) and answer the "
    "requests the mount answers (lookup, getattr, open, read, release: \"dropped\" "
    "sends every byte through the daemon, \"kept\" no bytes, only the requests of "
    "each open and close, the bytes coming from the kernel's page cache), so a daemon "
    "of their kind that answers those requests serves small files no faster than its "
    "floor in that run. A daemon that asks the kernel for fewer requests (no open at "
    "all, FUSE passthrough) is not bounded by them; the mount opens every file to pin "
    "the version it reads.")


def _c_floor(root: str, mnt: str, work: str, timeout: float):
    """The C floor (bench/fuse_floor.c) compiled and mounted at `mnt` with the mount's
    kernel options: its process, or the reason it cannot run here."""
    from fluidcache.posix.ops import MAX_READ
    exe = os.path.join(work, "fuse_floor")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuse_floor.c")
    try:
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], check=True,
                               capture_output=True, text=True).stdout.split()
        subprocess.run(["gcc", "-O2", "-o", exe, src, *flags], check=True,
                       capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        why = getattr(exc, "stderr", "") or str(exc)
        return f"not compiled (needs gcc, pkg-config and libfuse3-dev): {why.strip()[:200]}"
    proc = subprocess.Popen([exe, root, mnt, str(timeout), str(MAX_READ), "-f",
                             "-o", "ro,fsname=cfloor,default_permissions"])
    deadline = time.monotonic() + 60
    while not os.path.ismount(mnt):                # polling a condition: it is live
        if proc.poll() is not None:
            return f"did not mount (exit {proc.returncode})"
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            return "did not mount within 60 s"
        time.sleep(0.05)
    return proc


def _drop(paths) -> None:
    """The kernel's cached pages of these files go (FUSE pages are clean: dropped)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _read_all(kind: str, names, roots: dict, fs) -> dict:
    out = {}
    for n in names:
        if kind == "fluid":
            with fs.open(f"fluid://bench/{n}", "rb") as f:
                out[n] = xxhash.xxh3_64_hexdigest(f.read())
        else:
            with open(os.path.join(roots[kind], n), "rb") as f:
                out[n] = xxhash.xxh3_64_hexdigest(f.read())
    return out


def _worker(tasks, results, barrier, names, roots, want, home) -> None:
    os.environ["FLUIDCACHE_HOME"] = home
    import fsspec
    fs = fsspec.filesystem("fluid")
    fs.ls("fluid://bench/img")
    while True:
        kind = tasks.get()
        if kind is None:
            return
        barrier.wait()
        t0 = time.perf_counter()
        got = _read_all(kind, names, roots, fs)
        took = time.perf_counter() - t0
        results.put((took, got == want))


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def _small(procs: int, names, roots, want, home, rounds) -> dict:
    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    barrier = ctx.Barrier(procs)
    shares = [names[i::procs] for i in range(procs)]
    ps = [ctx.Process(target=_worker, args=(tasks, results, barrier, s, roots,
                                            {n: want[n] for n in s}, home)) for s in shares]
    for p in ps:
        p.start()
    rates: dict[str, list[float]] = {}
    try:
        order = ["tmpfs", "fluid", "mount, page cache dropped", "mount, page cache kept",
                 FLOOR, FLOOR_KEPT] + ([CFLOOR, CKEPT] if "cfloor" in roots else [])
        for r in range(rounds + 1):                  # round 0 warms every path up
            for label in order:
                kind = {"tmpfs": "tmpfs", "fluid": "fluid", FLOOR: "floor", FLOOR_KEPT: "floor",
                        CFLOOR: "cfloor", CKEPT: "cfloor"}.get(label, "mount")
                if label in ("mount, page cache dropped", FLOOR, CFLOOR):
                    _drop(os.path.join(roots[kind], n) for n in names)
                for _ in ps:
                    tasks.put(kind)
                got = [results.get(timeout=600) for _ in ps]
                assert all(ok for _, ok in got), f"{label}: wrong bytes"
                if r:
                    rates.setdefault(label, []).append(len(names) / max(t for t, _ in got))
    finally:
        for _ in ps:
            tasks.put(None)
        for p in ps:
            p.join(60)
    return rates


def _big(path_of: dict, fs, want: str, rounds: int, mnt_big: str) -> dict:
    def read_plain(path):
        h = xxhash.xxh3_64()
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        return h.hexdigest()

    def read_fluid():
        h = xxhash.xxh3_64()
        with fs.open("fluid://bench/big.bin", "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        return h.hexdigest()

    rows = {"big: tmpfs": lambda: read_plain(path_of["tmpfs"]), "big: fluid": read_fluid,
            "big: mount, page cache dropped": lambda: read_plain(mnt_big),
            "big: mount, page cache kept": lambda: read_plain(mnt_big)}
    size = os.path.getsize(path_of["tmpfs"])
    gbs: dict[str, list[float]] = {}
    for r in range(rounds + 1):
        for label, go in rows.items():
            if label == "big: mount, page cache dropped":
                _drop([mnt_big])
            t0 = time.perf_counter()
            assert go() == want, f"{label}: wrong bytes"
            if r:
                gbs.setdefault(label, []).append(size / (time.perf_counter() - t0) / 1e9)
    return gbs


def _print(title: str, rows: dict, ref: str, unit: str, md: list) -> None:
    print(f"\n{title} (median round / worst round; ratio of medians to {ref})")
    md += ["", f"**{title}** (ratios of medians to {ref})", "",
           f"| path | {unit} median | {unit} worst | ratio | target |",
           "| --- | --- | --- | --- | --- |"]
    base = _median(rows[ref])
    for label, xs in rows.items():
        worst = min(xs)
        target = TARGETS.get(label, "")
        print(f"  {label:<34} {_median(xs):>10,.2f} / {worst:>10,.2f} {unit}  "
              f"{_median(xs) / base:5.2f}x  {target}")
        md.append(f"| {label} | {_median(xs):,.2f} | {worst:,.2f} | "
                  f"{_median(xs) / base:.2f}x | {target} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--files", type=int)
    p.add_argument("--big-mib", type=int)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=None,
                   help="write the results as the 'fuse' section of OUT/RESULTS.md")
    a = p.parse_args(argv)
    md = ["## POSIX mount (`python -m bench.fuse`)", "",
          f"{os.cpu_count()} cores shared by the readers, the mount's daemon and the worker; "
          f"one run, {a.rounds} rounds interleaved path by path. Median = the median round, "
          "worst = the slowest round (for rates, the lowest). Small files: plain "
          "`open().read()`, each process its share, all started together; \"page cache "
          "dropped\": the kernel's pages of the files dropped before the round (every byte "
          "through the daemon); \"kept\": what the last round left (a second epoch on one "
          "node); the do-nothing FUSE fs hands out bytes it holds in memory (what libfuse, "
          "mfusepy and the kernel's round trips cost alone), and its twin in C "
          "(bench/fuse_floor.c: what libfuse and the kernel cost with no Python). "
          "Every read's bytes are checked."]
    n_files = a.files or (300 if a.quick else 2000)
    big_mib = a.big_mib or (64 if a.quick else 256)

    from fluidcache import cluster, config, connect
    from fluidcache.testing.s3 import MotoServer

    home = tempfile.mkdtemp(prefix="fluidcache-bench-")
    os.environ["FLUIDCACHE_HOME"] = home
    rng = random.Random(0)
    files = {f"img/{i:05d}.jpg": rng.randbytes(rng.randint(80_000, 140_000))
             for i in range(n_files)}
    big = b"".join(rng.randbytes(1 << 20) for _ in range(big_mib))
    names = sorted(files)
    want = {n: xxhash.xxh3_64_hexdigest(b) for n, b in files.items()}
    tmpfs = tempfile.mkdtemp(prefix="fc-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                             else None)
    mnt = tempfile.mkdtemp(prefix="fc-mnt-")
    floor_mnt = tempfile.mkdtemp(prefix="fc-floor-")
    cfloor_mnt = tempfile.mkdtemp(prefix="fc-cfloor-")
    cfloor = None
    cli = [sys.executable, "-m", "fluidcache.cli"]
    with MotoServer(log_path=os.path.join(home, "moto.log")) as moto:
        s3 = moto.filesystem()
        stage(s3, tmpfs, files, big)
        cfg = config.load(tiers=[{"medium": "MEM", "path": os.path.join(tmpfs, "tier"),
                                  "quota": f"{2 * (big_mib + 400)}MiB"}])
        cluster.start(cfg, dashboard=False)
        mounted = False
        try:
            client = connect()
            client.create_dataset("bench", {"/": "s3://bench"}, moto.options())
            fs = client.filesystem()
            print("caching everything (one read through fluid://) ...", flush=True)
            for n in names:
                fs.cat_file(f"fluid://bench/{n}")
            assert xxhash.xxh3_64_hexdigest(fs.cat_file("fluid://bench/big.bin")) == \
                xxhash.xxh3_64_hexdigest(big)
            subprocess.run(cli + ["mount", "fluid://bench", mnt], check=True)
            from fluidcache.posix.mount import kernel_timeout
            timeout = kernel_timeout(client.dataset("bench"))     # the floors' too
            mounted = True
            floor = mp.get_context("spawn").Process(target=_floor_daemon, args=(
                floor_mnt, tmpfs, timeout), daemon=True)
            floor.start()
            while not os.path.ismount(floor_mnt):     # polling a condition: it is live
                assert floor.is_alive(), "the do-nothing FUSE fs did not start"
                time.sleep(0.05)
            roots = {"tmpfs": tmpfs, "mount": mnt, "floor": floor_mnt}
            cfloor = _c_floor(tmpfs, cfloor_mnt, home, timeout)
            if isinstance(cfloor, str):
                print(f"the C floor is left out: {cfloor}")
                md.append(f"\nThe C floor is left out of this run: {cfloor}")
                cfloor = None
            else:
                roots["cfloor"] = cfloor_mnt
            for procs in (1, 4):
                rates = _small(procs, names, roots, want, home, a.rounds)
                _print(f"{n_files} small files, {procs} process(es)", rates, "fluid",
                       "files/s", md)
            gbs = _big({"tmpfs": os.path.join(tmpfs, "big.bin")}, fs,
                       xxhash.xxh3_64_hexdigest(big), a.rounds, os.path.join(mnt, "big.bin"))
            _print(f"one {big_mib} MiB file, read(8 MiB) to the end", gbs, "big: tmpfs",
                   "GB/s", md)
            md += ["", READING]
            if a.out:
                from . import report
                report.put_section(os.path.join(a.out, "RESULTS.md"), "fuse", "\n".join(md))
                print(f"\nwrote the fuse section of {os.path.join(a.out, 'RESULTS.md')}")
        finally:
            if mounted:
                subprocess.run(cli + ["unmount", mnt], check=False)
            for m in (floor_mnt, cfloor_mnt):
                if os.path.ismount(m):
                    subprocess.run(["fusermount3", "-u", m], check=False)
            if cfloor is not None:
                try:
                    cfloor.wait(30)
                except subprocess.TimeoutExpired:
                    cfloor.kill()
            cluster.stop()
            shutil.rmtree(tmpfs, ignore_errors=True)
            shutil.rmtree(mnt, ignore_errors=True)
            shutil.rmtree(floor_mnt, ignore_errors=True)
            shutil.rmtree(cfloor_mnt, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
