"""Load: concurrent client processes doing mixed reads (whole small files, random ranges,
large streams) on a warm and a half-warm cache: no wrong byte, no error, and the
worker's memory stays bounded. FLUIDCACHE_LOAD_PROCS / FLUIDCACHE_LOAD_READS scale it
(default 16 processes x 2,000 reads)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration
PROCS = int(os.environ.get("FLUIDCACHE_LOAD_PROCS", "16"))
READS = int(os.environ.get("FLUIDCACHE_LOAD_READS", "2000"))

_CLIENT = r"""
import hashlib, json, os, random, sys
import fsspec
root, seed, reads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
names = json.loads(open(os.path.join(root, "names.json")).read())
fs = fsspec.filesystem("fluid", short_circuit=seed % 2 == 0)
rng = random.Random(seed)
wrong = done = nbytes = 0
for _ in range(reads):
    name = rng.choice(names)
    with open(os.path.join(root, name), "rb") as f:
        body = f.read()
    kind = rng.random()
    if kind < 0.6 or len(body) < 2:
        got, want = fs.cat_file("fluid://mixed/" + name), body
    elif kind < 0.9:
        a = rng.randrange(len(body)); b = rng.randrange(a, len(body) + 1)
        got, want = fs.cat_file("fluid://mixed/" + name, a, b), body[a:b]
    else:
        with fs.open("fluid://mixed/" + name, "rb") as f:
            parts = []
            while chunk := f.read(rng.choice([4096, 65536, 1 << 20])):
                parts.append(chunk)
        got, want = b"".join(parts), body
    wrong += got != want
    nbytes += len(got)
    done += 1
fs.client.flush()
print(json.dumps({"reads": done, "wrong": wrong, "bytes": nbytes}))
"""


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.parametrize("cache", ["warm", "half-warm"])
def test_concurrent_mixed_reads(cluster, dataset_files, tmp_path, cache):
    client = cluster["client"]
    for name, body in dataset_files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(body)
    names = sorted(dataset_files)
    (tmp_path / "names.json").write_text(json.dumps(names))
    fs = client.filesystem()
    for n in names:
        fs.cat_file(f"fluid://mixed/{n}")                 # warm
    fs.client.flush()
    if cache == "half-warm":
        for n in names[::2]:
            client.free(f"fluid://mixed/{n}")
    procs = [subprocess.Popen([sys.executable, "-c", _CLIENT, str(tmp_path), str(seed),
                               str(READS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for seed in range(PROCS)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(r["reads"] for r in results) == PROCS * READS
    assert sum(r["wrong"] for r in results) == 0
    st = client.status()
    for w in st["workers"]:
        tiers = sum(t["capacity"] for t in w["tiers"])
        peak = _peak_rss(w["pid"])
        print(f"{cache}: {PROCS}x{READS} reads, {sum(r['bytes'] for r in results)} bytes "
              f"compared; worker peak RSS {peak / 2**20:.0f} MiB (tiers {tiers / 2**20:.0f} "
              "MiB, in tmpfs/disk, not in the process)")
        assert w["alive"] and peak < 1.5 * 2**30       # bounded: not growing with the load
