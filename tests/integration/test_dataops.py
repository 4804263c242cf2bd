"""Data operations on a real cluster with a small cache: load, free, pin, ttl, du, ls -l,
status, through the Python API and the CLI."""
from __future__ import annotations

import hashlib
import json
import os
import random

import pytest

from ..helpers import cli_env, home_env, wait_for

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def dc(tmp_path_factory, moto):
    """A cluster whose cache holds 32 MiB (8 MiB memory + 24 MiB SSD), 1 MiB blocks, over
    a dataset `ops` with: small/ (24 files of ~100 KB), hot/ (2 files of 1.5 MiB),
    mid/ (64 files of 128 KiB) and bulk/ (48 files of 2 MiB: 3x the cache)."""
    root = tmp_path_factory.mktemp("dataops")
    env = dict(os.environ, FLUIDCACHE_HOME=str(root / "home"))
    mem = f"/dev/shm/fluidcache-dataops-{os.getpid()}" if os.path.isdir("/dev/shm") \
        else str(root / "mem")
    rnd = random.Random(11)
    files = {f"small/s{i:02d}.bin": rnd.randbytes(rnd.randint(90_000, 110_000)) for i in range(24)}
    files.update({f"hot/h{i}.bin": rnd.randbytes(3 * MiB // 2) for i in range(2)})
    files.update({f"mid/m{i:02d}.bin": rnd.randbytes(128 * 1024) for i in range(64)})
    files.update({f"bulk/b{i:02d}.bin": rnd.randbytes(2 * MiB) for i in range(48)})
    s3 = moto.filesystem()
    s3.mkdir("fc-ops")
    s3.pipe({f"fc-ops/{k}": v for k, v in files.items()})
    cli_env(env, "start", "--mem", "8MiB", "--mem-path", mem, "--ssd", f"{root}/ssd:24MiB",
            "--block-size", "1MiB", "--no-dashboard")
    try:
        with home_env(env["FLUIDCACHE_HOME"]):
            import fluidcache
            client = fluidcache.connect()
            client.create_dataset("ops", {"/": "s3://fc-ops"}, moto.options())
            yield {"env": env, "files": files, "client": client}
    finally:
        cli_env(env, "stop", check=False)
        import shutil
        shutil.rmtree(mem, ignore_errors=True)


def _ufs(client) -> int:
    return sum(w["stats"]["ufs_bytes_read"] for w in client.status()["workers"])


def _read(files, prefix: str) -> None:
    import fsspec
    fs = fsspec.filesystem("fluid", skip_instance_cache=True)
    for name, body in files.items():
        if name.startswith(prefix):
            assert hashlib.sha256(fs.cat_file(f"fluid://ops/{name}")).digest() == \
                hashlib.sha256(body).digest(), name
    fs.client.flush()


def _total(files, prefix: str) -> int:
    return sum(len(b) for n, b in files.items() if n.startswith(prefix))


def test_load_then_du_all_cached_and_a_read_pass_reads_nothing_from_the_store(dc):
    client, files = dc["client"], dc["files"]
    seen = []
    st = client.load("fluid://ops/small", progress=seen.append)
    assert st["state"] == "done", st
    assert st["files"] == st["files_done"] == 24 and st["bytes_done"] == _total(files, "small/")
    assert seen and seen[-1]["state"] == "done"
    du = client.du("fluid://ops/small")
    assert du == {"path": "fluid://ops/small", "files": 24,
                  "total_bytes": _total(files, "small/"), "cached_bytes": _total(files, "small/")}
    before = _ufs(client)
    _read(files, "small/")
    assert _ufs(client) == before                     # every byte came from the cache
    again = client.load("fluid://ops/small")          # a re-run skips what is cached
    assert again["state"] == "done" and again["blocks"] == 0
    assert again["cached_bytes"] == _total(files, "small/")


def test_free_then_du_shows_nothing_cached(dc):
    client, files = dc["client"], dc["files"]
    client.load("fluid://ops/small")
    r = client.free("fluid://ops/small")
    assert r["freed_blocks"] == 24 and r["pinned_blocks"] == 0
    assert client.du("fluid://ops/small")["cached_bytes"] == 0
    before = _ufs(client)
    _read(files, "small/")                            # still correct, fetched again
    assert _ufs(client) - before == _total(files, "small/")


def test_a_pinned_path_survives_an_eviction_storm(dc):
    client, files = dc["client"], dc["files"]
    pinned = client.pin("fluid://ops/hot")
    assert pinned["files"] == 2
    assert client.rules()["pins"] == [["default", "ops", "hot"]]
    assert client.load("fluid://ops/hot")["state"] == "done"
    _read(files, "bulk/")                             # 96 MiB through a 32 MiB cache
    st = client.status()
    assert sum(w["stats"]["evictions"] for w in st["workers"]) > 0
    assert client.du("fluid://ops/hot")["cached_bytes"] == _total(files, "hot/")
    before = _ufs(client)
    _read(files, "hot/")
    assert _ufs(client) == before
    # free leaves pinned blocks unless forced; unpin makes them ordinary again
    assert client.free("fluid://ops/hot")["pinned_blocks"] == 4
    client.unpin("fluid://ops/hot")
    assert client.rules()["pins"] == []
    assert client.free("fluid://ops/hot")["freed_blocks"] == 4


def test_a_ttl_drops_the_cached_blocks_after_it(dc):
    client, files = dc["client"], dc["files"]
    client.load("fluid://ops/small/s01.bin")
    assert client.du("fluid://ops/small/s01.bin")["cached_bytes"] == len(files["small/s01.bin"])
    r = client.ttl("fluid://ops/small/s01.bin", "1s")
    assert r["rule"] == "ttl" and r["files"] == 1
    wait_for(lambda: client.du("fluid://ops/small/s01.bin")["cached_bytes"] == 0,
             timeout=30, what="the TTL'd block to be dropped")
    client.ttl("fluid://ops/small/s01.bin", "never")
    assert client.rules()["ttls"] == []


def test_an_interrupted_load_leaves_the_cluster_consistent_and_a_rerun_completes(dc):
    client, files = dc["client"], dc["files"]
    client.free("fluid://ops", force=True)
    job = client.load("fluid://ops/mid", wait=False)
    first = job.cancel()
    assert first["state"] in ("cancelled", "done"), first     # it may have been quick
    if first["state"] == "cancelled":
        assert first["blocks_done"] <= first["blocks"]
    du = client.du("fluid://ops/mid")
    assert 0 <= du["cached_bytes"] <= du["total_bytes"]
    _read(files, "mid/")                              # consistent: every byte right
    st = client.load("fluid://ops/mid")               # the re-run loads only the rest
    assert st["state"] == "done" and st["files_done"] == 64
    assert client.du("fluid://ops/mid")["cached_bytes"] == _total(files, "mid/")
    for w in client.status()["workers"]:
        for t in w["tiers"]:
            assert 0 <= t["used"] <= t["capacity"]


def test_cli_verbs_and_their_errors(dc):
    env, files = dc["env"], dc["files"]
    out = cli_env(env, "load", "fluid://ops/small", "--no-progress").stdout
    assert out.startswith("done: 24/24 files")
    du = json.loads(cli_env(env, "du", "fluid://ops/small", "--json").stdout)
    assert du["files"] == 24 and du["cached_bytes"] == du["total_bytes"]
    v = cli_env(env, "du", "fluid://ops/small", "--verbose").stdout
    assert "cached" in v and ("MEM" in v or "SSD" in v)
    ls = cli_env(env, "ls", "-l", "fluid://ops/small").stdout.splitlines()
    assert len(ls) == 24 and all(" * " in line for line in ls)
    st = cli_env(env, "status").stdout
    assert "workers" in st and "datasets" in st and "ops" in st and "hit%" in st
    meta = cli_env(env, "load", "fluid://ops", "--metadata-only").stdout
    assert meta.startswith(f"listed {len(files)} files")
    assert cli_env(env, "pin", "fluid://ops/small/s02.bin").stdout.startswith("pinned")
    assert cli_env(env, "unpin", "fluid://ops/small/s02.bin").stdout.startswith("unpinned")
    assert cli_env(env, "free", "fluid://ops/small").stdout.startswith("freed 24 blocks")
    for args, needle in ((("load", "fluid://nope"), "no dataset"),
                         (("du", "fluid://ops/../etc"), ".."),
                         (("du", "fluid://ops/missing/dir"), "no such"),
                         (("ttl", "fluid://ops/small", "10x"), "bad duration"),
                         (("pin", "fluid://"), "name a dataset"),
                         (("load", "fluid://ops/small", "--replicas", "99"), "replicas")):
        p = cli_env(env, *args, check=False)
        assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
        assert needle in p.stderr, (args, p.stderr)
    assert "example" in cli_env(env, "load", "--help").stdout
