"""The tiered store in a running worker: a small memory tier over an SSD tier, a dataset
larger than memory, blocks moving between tiers, quotas kept, and a killed worker that
comes back (restarted by Ray) with its cache."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from ..helpers import digests, read_digests, run_cli, status, wait_for

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


def _cli(env, *args):
    return run_cli(*args, env=env).stdout


@pytest.fixture(scope="module")
def small_cluster(tmp_path_factory, moto):
    root = tmp_path_factory.mktemp("tiers")
    env = dict(os.environ, FLUIDCACHE_HOME=str(root / "home"))
    mem = f"/dev/shm/fluidcache-tiers-{os.getpid()}" if os.path.isdir("/dev/shm") \
        else str(root / "mem")
    s3 = moto.filesystem()
    s3.mkdir("fc-tiers")
    rnd = __import__("random").Random(7)
    files = {f"f{i:02d}.bin": rnd.randbytes(2 * MiB + rnd.randint(0, 200_000)) for i in range(16)}
    s3.pipe({f"fc-tiers/{k}": v for k, v in files.items()})
    assert 34_000_000 < sum(map(len, files.values())) < 38_000_000     # ~36 MB
    _cli(env, "start", "--mem", "8MiB", "--mem-path", mem, "--ssd", f"{root}/ssd:48MiB",
         "--block-size", "1MiB", "--no-dashboard")
    try:
        opts = [f"--option={k}={v}" for k, v in moto.options().items()]
        _cli(env, "dataset", "create", "t", "--mount", "/=s3://fc-tiers", *opts)
        yield env, files
    finally:
        subprocess.run([sys.executable, "-m", "fluidcache.cli", "stop"], env=env,
                       capture_output=True, timeout=120)
        import shutil
        shutil.rmtree(mem, ignore_errors=True)


def _status(env) -> dict:
    return status(env)


def _read_all(env, files, short_circuit=True) -> None:
    assert read_digests(env, "t", files, short_circuit) == digests(files)


def _dataset(env) -> dict:
    return next(d for d in _status(env)["datasets"] if d["name"] == "t")


def _tiers_within_quota(st) -> None:
    for w in st["workers"]:
        for t in w["tiers"]:
            assert 0 <= t["used"] <= t["capacity"], t


def test_dataset_larger_than_memory_moves_down_and_stays_correct(small_cluster):
    env, files = small_cluster
    for _ in range(2):
        _read_all(env, files)
        _tiers_within_quota(_status(env))
    st = wait_for(lambda: (s := _status(env))["workers"][0]["stats"]["demotions"] > 0 and s,
                   what="demotions")
    mem, ssd = st["workers"][0]["tiers"]
    assert mem["capacity"] == 8 * MiB and ssd["capacity"] == 48 * MiB
    assert ssd["blocks"] > 0 and mem["blocks"] > 0
    # everything fits in MEM + SSD, so nothing was dropped and all of it is cached
    total_blocks = sum(-(-len(b) // MiB) for b in files.values())
    assert mem["blocks"] + ssd["blocks"] == total_blocks
    assert st["workers"][0]["stats"]["evictions"] == 0
    _tiers_within_quota(st)


def test_killed_worker_comes_back_with_its_cache(small_cluster):
    env, files = small_cluster
    _read_all(env, files)                       # warm
    _cli(env, "pin", "fluid://t/f00.bin")
    before = _status(env)["workers"][0]
    held = sum(t["blocks"] for t in before["tiers"])
    os.kill(before["pid"], signal.SIGKILL)
    after = wait_for(lambda: next((w for w in _status(env)["workers"]
                                    if w["alive"] and w["pid"] != before["pid"]), None),
                      timeout=120, what="the worker to be restarted by Ray")
    assert sum(t["blocks"] for t in after["tiers"]) == held
    total = sum(map(len, files.values()))       # the rescanned blocks say whose they are
    wait_for(lambda: _dataset(env)["cached_bytes"] == total, timeout=60,
             what="the restarted worker's full block report")
    _read_all(env, files, short_circuit=False)   # through the restarted worker's server
    blocks = sum(-(-len(b) // MiB) for b in files.values())
    # hits at the serving processes reach the worker's stats in their next report
    final = wait_for(lambda: (w := _status(env)["workers"][0])["stats"]["hits"] >= blocks
                     and w, timeout=30, what="the serving processes' hits in the stats")
    assert final["stats"]["ufs_bytes_read"] == 0
    # the restarted worker got the pin again from the master (its 3 blocks stay)
    freed = _cli(env, "free", "fluid://t/f00.bin")
    assert "3 pinned blocks kept" in freed, freed
    _cli(env, "unpin", "fluid://t/f00.bin")


def test_corrupt_block_is_never_served_and_is_fetched_again(small_cluster):
    env, files = small_cluster
    _read_all(env, files)
    w = _status(env)["workers"][0]
    path = next(os.path.join(dp, f) for t in w["tiers"] for dp, _, fs in os.walk(t["path"])
                for f in fs if f.endswith(".blk"))
    with open(path, "r+b") as f:          # flip one byte in the middle of the block
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 0xFF]))
    for short_circuit in (True, False):   # the local reader and the data server both check
        _read_all(env, files, short_circuit=short_circuit)
    after = _status(env)["workers"][0]
    assert after["stats"]["corrupt_blocks"] >= 1
    assert after["stats"]["ufs_fetches"] > w["stats"]["ufs_fetches"]   # fetched again


def test_reads_through_the_data_server_go_on_across_a_worker_kill(small_cluster):
    import threading

    import fsspec
    env, files = small_cluster
    _read_all(env, files)                               # everything cached
    old = os.environ.get("FLUIDCACHE_HOME")
    os.environ["FLUIDCACHE_HOME"] = env["FLUIDCACHE_HOME"]
    try:
        fs = fsspec.filesystem("fluid", short_circuit=False, skip_instance_cache=True)
        names = sorted(files)
        done, errors, passes = threading.Event(), [], [0]

        def reader():
            try:
                while not done.is_set():
                    for n in names:
                        assert fs.cat_file(f"fluid://t/{n}") == files[n], n
                    passes[0] += 1
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        t = threading.Thread(target=reader)
        t.start()
        wait_for(lambda: passes[0] >= 1 or errors, what="a first pass")
        pid = _status(env)["workers"][0]["pid"]
        os.kill(pid, signal.SIGKILL)                    # mid-epoch
        wait_for(lambda: next((w for w in _status(env)["workers"]
                               if w["alive"] and w["pid"] != pid), None), timeout=120,
                 what="the worker to be restarted")
        target = passes[0] + 2                          # two more whole passes after it
        wait_for(lambda: passes[0] >= target or errors, timeout=120, what="reads to go on")
        done.set()
        t.join(60)
        assert not errors, errors
        assert fs.client.counters["waits"] >= 1         # it did see the outage, and waited
    finally:
        if old is None:
            os.environ.pop("FLUIDCACHE_HOME", None)
        else:
            os.environ["FLUIDCACHE_HOME"] = old


_WRITER = """
import fsspec, json, random, sys
fs = fsspec.filesystem("fluid")
sizes = json.loads(sys.argv[1])
for name, n in sizes.items():
    with fs.open("fluid://ka/" + name, "wb") as f:
        f.write(random.Random(n).randbytes(n))
print("written")
"""


def test_async_through_files_survive_a_worker_kill_before_their_upload(small_cluster, moto):
    """Written while the store is down, acknowledged, the worker SIGKILLed at once:
    after Ray restarts it and the store is back, `sync` returns with every file in the
    store, byte-identical (the journal on the SSD tier held them)."""
    from fluidcache.testing.proxy import LatencyProxy
    from fluidcache.testing.s3 import free_port
    import random

    env, _ = small_cluster
    port = free_port()
    moto.filesystem().mkdir("fc-kill")
    opts = dict(moto.options(), endpoint_url=f"http://127.0.0.1:{port}")
    with LatencyProxy(moto.endpoint, 0.0, port=port):
        _cli(env, "dataset", "create", "ka", "--mount", "/=s3://fc-kill/a",
             "--write-mode", "async-through", *[f"--option={k}={v}" for k, v in opts.items()])
    sizes = {"empty.bin": 0, "100KB.bin": 100_000, "d/9MiB+3.bin": 9 * MiB + 3}
    p = subprocess.run([sys.executable, "-c", _WRITER, __import__("json").dumps(sizes)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "written" in p.stdout, p.stderr
    before = _status(env)
    assert before["uploads"]["pending_files"] == 3        # the store is down: all wait
    worker = before["workers"][0]
    os.kill(worker["pid"], signal.SIGKILL)
    wait_for(lambda: next((w for w in _status(env)["workers"]
                           if w["alive"] and w["pid"] != worker["pid"]), None),
             timeout=120, what="the worker to be restarted by Ray")
    with LatencyProxy(moto.endpoint, 0.0, port=port):
        out = run_cli("sync", "--timeout", "120", "fluid://ka", env=env)
        assert "0 files pending" in out.stdout
    s3 = moto.filesystem()
    s3.invalidate_cache()
    for name, n in sizes.items():
        assert s3.cat_file(f"fc-kill/a/{name}") == random.Random(n).randbytes(n), name
    assert _status(env)["uploads"]["pending_files"] == 0
