"""Faults on a running cluster, every byte read compared with the store's: block files
truncated or deleted under the worker, a tier whose writes fail, the under store erring,
timing out and disappearing and coming back, a connection cut mid-transfer. Each: reads
succeed with the right bytes, or raise a clear OSError when no copy is reachable; the
cluster recovers by itself. (Worker and master SIGKILL, a node removed, and corrupted
blocks are covered in tests/integration: test_tiers, test_master_restart,
test_membership.)"""
from __future__ import annotations

import os
import random
import socket
import threading

import pytest

from fluidcache.testing.proxy import LatencyProxy

from ..helpers import cli_env, home_env, wait_for

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
STATS = {"bytes_compared": 0, "faults": 0}


@pytest.fixture(scope="module")
def fc(tmp_path_factory, moto):
    """A cluster (1 MiB blocks) over `fault`: the bucket through a proxy we can stop,
    make fail or slow; files of 100 KB to 3 MiB."""
    root = tmp_path_factory.mktemp("faults")
    env = dict(os.environ, FLUIDCACHE_HOME=str(root / "home"))
    mem = f"/dev/shm/fluidcache-faults-{os.getpid()}" if os.path.isdir("/dev/shm") \
        else str(root / "mem")
    rnd = random.Random(5)
    files = {f"f{i:02d}.bin": rnd.randbytes(rnd.choice([100_000, 1 * MiB + 7, 3 * MiB - 3]))
             for i in range(24)}
    moto.filesystem().mkdir("fc-faults")
    moto.filesystem().pipe({f"fc-faults/{k}": v for k, v in files.items()})
    proxy = LatencyProxy(moto.endpoint, 0.0).__enter__()
    cli_env(env, "start", "--mem", "64MiB", "--mem-path", mem, "--ssd", f"{root}/ssd:64MiB",
            "--block-size", "1MiB", "--no-dashboard")
    state = {"proxy": proxy}
    try:
        with home_env(env["FLUIDCACHE_HOME"]):
            import fluidcache
            client = fluidcache.connect()
            opts = dict(proxy.options(), config_kwargs={
                "connect_timeout": 2, "read_timeout": 3, "retries": {"max_attempts": 1}})
            client.create_dataset("fault", {"/": "s3://fc-faults"}, opts)
            yield {"env": env, "files": files, "client": client, "moto": moto,
                   "state": state, "mem": mem}
    finally:
        cli_env(env, "stop", check=False)
        state["proxy"].__exit__()
        import shutil
        shutil.rmtree(mem, ignore_errors=True)
        print(f"faults injected: {STATS['faults']}, bytes compared: {STATS['bytes_compared']}")


def _fs(short_circuit=True, **kw):
    import fsspec
    return fsspec.filesystem("fluid", short_circuit=short_circuit, skip_instance_cache=True,
                             **kw)


def _check_all(fc, fs=None) -> None:
    fs = fs or _fs()
    for name, body in fc["files"].items():
        got = fs.cat_file(f"fluid://fault/{name}")
        assert got == body, name
        STATS["bytes_compared"] += len(got)
    fs.client.flush()


def _block_files(fc) -> list[str]:
    w = fc["client"].status()["workers"][0]
    return [os.path.join(dp, f) for t in w["tiers"] for dp, _, fs in os.walk(t["path"])
            for f in fs if f.endswith(".blk")]


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_block_files_damaged_under_a_running_worker(fc, damage):
    _check_all(fc)                                     # everything cached
    victims = _block_files(fc)[::3]
    for path in victims:
        if damage == "truncate":
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
        else:
            os.unlink(path)
        STATS["faults"] += 1
    for short_circuit in (True, False):                # the local reader, then the server
        _check_all(fc, _fs(short_circuit))
    assert fc["client"].status()["workers"][0]["alive"]


def test_a_tier_whose_writes_fail_still_serves_right_bytes(fc):
    """Every key-prefix directory of the memory tier is replaced by a file: each write
    there fails with an OSError (as on a full or read-only disk)."""
    client = fc["client"]
    client.free("fluid://fault", force=True)
    w = client.status()["workers"][0]
    tier = w["tiers"][0]["path"]
    made = []
    for i in range(256):
        d = os.path.join(tier, f"{i:02x}")
        if os.path.isdir(d):
            os.rmdir(d)                                # empty: everything was freed
        open(d, "w").close()
        made.append(d)
    try:
        _check_all(fc)
        STATS["faults"] += 1
        st = client.status()["workers"][0]
        assert st["alive"] and st["stats"]["write_failures"] > 0
        _check_all(fc, _fs(short_circuit=False))       # served again, uncached or from SSD
    finally:
        for d in made:
            os.unlink(d)
    _check_all(fc)                                     # writable again: cached again


def _restart_proxy(fc, **kw) -> None:
    old = fc["state"]["proxy"]
    old.__exit__()
    fc["state"]["proxy"] = LatencyProxy(fc["moto"].endpoint, port=old.port, **kw).__enter__()


def test_under_store_errors_timeouts_and_absence_then_recovery(fc):
    client = fc["client"]
    _check_all(fc)                                     # cached: needs no store
    client.free("fluid://fault/f00.bin")
    for fault in ({"fail": True}, {"delay": 30.0}, None):
        if fault is None:                              # gone: nothing listens
            fc["state"]["proxy"].__exit__()
        else:
            _restart_proxy(fc, **fault)
        STATS["faults"] += 1
        fs = _fs(failover_timeout=5)
        # cached files are served as ever
        for name in ("f01.bin", "f05.bin"):
            assert fs.cat_file(f"fluid://fault/{name}") == fc["files"][name]
        # the freed one has no copy anywhere: a clear OSError, not a hang or wrong bytes
        with pytest.raises(OSError) as err:
            fs.cat_file("fluid://fault/f00.bin")
        assert "fault/f00.bin" in str(err.value) or "under store" in str(err.value).lower() \
            or "serve" in str(err.value)
        assert "testing" not in str(err.value)         # no credential in the message
        assert client.status()["workers"][0]["alive"]
    _restart_proxy(fc, delay=0.0)                      # the store is back

    def works() -> bool:
        try:
            return _fs().cat_file("fluid://fault/f00.bin") == fc["files"]["f00.bin"]
        except OSError:      # a read that joins the fill begun while the store hung gets
            return False     # that fill's error; the next one fetches afresh
    wait_for(works, timeout=60, what="reads of the freed file to work again")
    _check_all(fc)


class _CuttingProxy:
    """Forwards to a worker's data server; the first connection is cut after `cut` bytes
    of the reply."""

    def __init__(self, target: str, cut: int) -> None:
        self.host, port = target.rsplit(":", 1)
        self.port_up, self.cut = int(port), cut
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._pair, args=(c,), daemon=True).start()

    def _pair(self, c: socket.socket) -> None:
        up = socket.create_connection((self.host, self.port_up))
        cut = self.cuts == 0
        self.cuts += 1

        def pump(src, dst, limit):
            sent = 0
            try:
                while data := src.recv(65536):
                    if limit is not None and sent + len(data) > limit:
                        dst.sendall(data[:limit - sent])
                        break
                    dst.sendall(data)
                    sent += len(data)
            except OSError:
                pass
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        threading.Thread(target=pump, args=(c, up, None), daemon=True).start()
        pump(up, c, self.cut if cut else None)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("path", ["serve", "address"])
def test_a_connection_cut_mid_transfer(fc, path):
    """Cut at the worker's serving processes (then the worker itself answers) or at the
    worker's own data server (with no serving processes in the map)."""
    _check_all(fc)
    fs = _fs(short_circuit=False, failover_timeout=30)
    name = next(n for n, b in fc["files"].items() if len(b) > 2 * MiB)
    fs.info(f"fluid://fault/{name}")
    m = fs.client.cluster.map()
    w = m["workers"][0]
    assert w["serve"]
    proxy = _CuttingProxy(w[path], cut=300_000)
    fs.client.cluster._map = dict(m, workers=[dict(w, **{"serve": None, path: proxy.address})])
    try:
        got = fs.cat_file(f"fluid://fault/{name}")
        STATS["faults"] += 1
    finally:
        proxy.close()
    assert got == fc["files"][name]
    assert proxy.cuts >= 1
    assert fs.client.counters["waits"] >= 1 or fs.client.counters["remote"] >= 3
