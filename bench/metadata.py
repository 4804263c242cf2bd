"""Master metadata at scale: memory per listed file and ls/info throughput.

Builds the master's cached listing of one dataset directory of N files (names, sizes,
ETag-like versions, as S3 would list them) with the real DirListing, measures the memory
it holds with tracemalloc, then times `info` (a file's entry with its file id) and paged
`ls` through the master's own reply path (no network: the master's cost alone).

    python -m bench.metadata                 # N = 100,000 and 1,000,000
    python -m bench.metadata --files 20000   # quick
"""
from __future__ import annotations

import argparse
import gc
import random
import time
import tracemalloc

from fluidcache.master.listing import DIR, FILE, DirListing, info_entry, ls_page


def _entries(n: int, seed: int = 0):
    rng = random.Random(seed)
    for i in range(n):
        etag = '"%032x"' % rng.getrandbits(128)
        yield f"n{i % 1000:04d}_{i:08d}.JPEG", FILE, rng.randint(80_000, 140_000), etag
    for d in range(10):
        yield f"dir{d}", DIR, 0, ""


def measure(n: int, reps: int = 20000) -> dict:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    listing = DirListing(_entries(n))
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    def url_of(child: str) -> str:
        return f"s3://bucket/imagenet/train/{child}"

    rng = random.Random(1)
    names = [listing.names[rng.randrange(n)] for _ in range(reps)]
    t0 = time.perf_counter()
    for name in names:
        info_entry(listing, "imagenet/train/", url_of, name)
    info_s = reps / (time.perf_counter() - t0)
    t0, pages, sent, after = time.perf_counter(), 0, 0, None
    while True:
        entries, after = ls_page(listing, "imagenet/train/", url_of, after, 2000)
        pages, sent = pages + 1, sent + len(entries)
        if after is None:
            break
    ls_s = time.perf_counter() - t0
    return {"files": n, "bytes_per_file": held / n, "info_per_s": info_s,
            "ls_entries_per_s": sent / ls_s, "ls_pages": pages}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, action="append",
                   help="listed files (repeatable; default 100000 and 1000000)")
    a = p.parse_args(argv)
    print(f"{'files':>10} {'bytes/file':>11} {'info ops/s':>12} {'ls entries/s':>13} {'pages':>6}")
    for n in a.files or [100_000, 1_000_000]:
        r = measure(n)
        print(f"{r['files']:>10,} {r['bytes_per_file']:>11.0f} {r['info_per_s']:>12,.0f} "
              f"{r['ls_entries_per_s']:>13,.0f} {r['ls_pages']:>6}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
