"""Remote reads through the worker's serving processes (worker/serve.py): cached blocks
answered by them with the client checking each block's checksum, batches (`cat` of many
paths, `cat_ranges`), their hits counted by the worker, a serving process killed (reads
go on, byte-identical, and another one starts), and tenants held apart there too."""
from __future__ import annotations

import os
import signal

import fsspec
import pytest

from fluidcache.client.conn import Pool
from fluidcache.errors import NotHere

from ..helpers import wait_for

pytestmark = pytest.mark.integration


def _tcp():
    return fsspec.filesystem("fluid", short_circuit=False, skip_instance_cache=True)


def _worker(cluster) -> dict:
    return cluster["client"].status()["workers"][0]


def test_cached_blocks_are_served_by_the_serving_processes(cluster, dataset_files):
    w = _worker(cluster)
    assert w.get("serve") and w.get("serve_pids"), w
    fs = _tcp()
    names = [n for n in dataset_files if dataset_files[n]]
    for n in names:                                   # cached (or already were)
        assert fs.cat_file(f"fluid://mixed/{n}") == dataset_files[n], n
    before = _worker(cluster)["stats"]["hits"]
    served = fs.client.counters["served"]
    for n in names:
        assert fs.cat_file(f"fluid://mixed/{n}") == dataset_files[n], n
        assert fs.cat_file(f"fluid://mixed/{n}", 1, 9) == dataset_files[n][1:9], n
    assert fs.client.counters["served"] > served
    assert fs.client.counters["corrupt_served"] == 0
    # their hits reach the worker's counters (reported, then heartbeated to the master)
    wait_for(lambda: _worker(cluster)["stats"]["hits"] >= before + len(names), 60,
             "the serving processes' hits in the worker's stats")


def test_cat_of_many_paths_reads_in_batches(cluster, dataset_files):
    fs = _tcp()
    urls = [f"fluid://mixed/{n}" for n in sorted(dataset_files)]
    fs.cat(urls)                                                       # cached now
    got = fs.cat(urls + ["fluid://mixed/no-such-file"], on_error="return")
    for n, body in dataset_files.items():
        assert got[f"mixed/{n}"] == body, n
    assert isinstance(got["mixed/no-such-file"], FileNotFoundError)
    assert fs.client.counters["batches"] >= 1
    with pytest.raises(FileNotFoundError):
        fs.cat(urls + ["fluid://mixed/no-such-file"])
    assert "mixed/no-such-file" not in fs.cat(urls + ["fluid://mixed/no-such-file"],
                                              on_error="omit")
    big = dataset_files["multi/big.bin"]
    starts = [0, 5, len(big) - 100, 2**20 - 10, -7]
    ends = [10, 2**20 + 5, None, 2**20 + 10, None]
    got = fs.cat_ranges(["fluid://mixed/multi/big.bin"] * 5, starts, ends)
    assert got == [big[s:e] for s, e in zip(starts, ends, strict=True)]
    # with short-circuit reads on, the same (local blocks read from the tier files)
    local = fsspec.filesystem("fluid", skip_instance_cache=True).cat(urls)
    assert all(local[f"mixed/{n}"] == b for n, b in dataset_files.items())


def test_a_killed_serving_process_is_replaced_and_reads_go_on(cluster, dataset_files):
    w = _worker(cluster)
    victim = w["serve_pids"][0]
    fs = _tcp()
    name = "images/img001.jpg"
    assert fs.cat_file(f"fluid://mixed/{name}") == dataset_files[name]
    os.kill(victim, signal.SIGKILL)
    for _ in range(20):                 # whichever process answers, the bytes are right
        for n in ("images/img001.jpg", "multi/big.bin", "tables/data.parquet"):
            assert _tcp().cat_file(f"fluid://mixed/{n}") == dataset_files[n], n
    wait_for(lambda: victim not in _worker(cluster)["serve_pids"] and
             len(_worker(cluster)["serve_pids"]) == len(w["serve_pids"]), 60,
             "a new serving process")
    assert _tcp().cat_file(f"fluid://mixed/{name}") == dataset_files[name]


def test_the_port_stays_the_workers_while_its_serving_processes_are_down(cluster,
                                                                         dataset_files):
    """Every serving process killed at once: no other process can take their port (the
    worker holds the listening socket), and new ones serve on it again."""
    import socket
    w = _worker(cluster)
    host, port = w["serve"].rsplit(":", 1)
    for pid in w["serve_pids"]:
        os.kill(pid, signal.SIGKILL)
    with socket.socket() as squatter:
        with pytest.raises(OSError):
            squatter.bind((host, int(port)))
    wait_for(lambda: (now := _worker(cluster)).get("serve") == w["serve"] and
             len(now["serve_pids"]) == len(w["serve_pids"]) and
             not set(now["serve_pids"]) & set(w["serve_pids"]), 60, "new serving processes")
    fs = _tcp()
    n = "images/img002.jpg"
    assert fs.cat_file(f"fluid://mixed/{n}") == dataset_files[n]
    wait_for(lambda: (fs.cat_file(f"fluid://mixed/{n}") == dataset_files[n] and
                      fs.client.counters["served"] > 0), 30, "a read served on the port")


def test_a_hung_serving_process_holds_no_read_long_and_is_replaced(cluster, dataset_files):
    """A stopped serving process (as one stuck on a stalled disk) still gets connections
    from the kernel: its readers wait `serve_timeout`, then the worker answers; the
    worker kills it when its reports stop and starts another."""
    import time
    w = _worker(cluster)
    victim = w["serve_pids"][0]
    os.kill(victim, signal.SIGSTOP)
    try:
        slowest = 0.0
        for _ in range(6):          # fresh clients: some connect to the stopped process
            fs = fsspec.filesystem("fluid", short_circuit=False, skip_instance_cache=True,
                                   serve_timeout=1)
            for n in ("images/img001.jpg", "images/img004.jpg"):
                t0 = time.monotonic()
                assert fs.cat_file(f"fluid://mixed/{n}") == dataset_files[n], n
                slowest = max(slowest, time.monotonic() - t0)
        assert slowest < 30          # never the request timeout (60 s)
        wait_for(lambda: victim not in _worker(cluster)["serve_pids"] and
                 len(_worker(cluster)["serve_pids"]) == len(w["serve_pids"]), 90,
                 "the silent serving process replaced")
    finally:
        try:
            os.kill(victim, signal.SIGCONT)
        except ProcessLookupError:
            pass


def test_a_serving_process_gives_no_namespace_anothers_blocks(cluster, dataset_files, moto):
    import fluidcache
    admin = cluster["client"]
    token = admin.create_namespace("servetenant", allow=["s3://fc-test/ds/small"],
                                   endpoints=[moto.endpoint])
    fluidcache.connect(token=token, namespace="servetenant").create_dataset(
        "mixed", {"/": "s3://fc-test/ds/small"}, moto.options())   # same dataset name
    fs = _tcp()
    entry = fs.info("fluid://mixed/one.bin")
    assert fs.cat_file("fluid://mixed/one.bin") == dataset_files["one.bin"]     # cached
    serve = _worker(cluster)["serve"]
    args = {"ds": "mixed", "p": "one.bin", "v": entry["version"], "s": entry["size"],
            "b": 0, "f": entry["fid"]}
    assert Pool().call(serve, "read", args, "default", admin.endpoint.token)[1] == b"\x07"
    for ns, tk in (("servetenant", token), ("default", token), ("default", "guess")):
        with pytest.raises(NotHere):
            Pool().call(serve, "read", args, ns, tk)
        with pytest.raises(NotHere):
            Pool().call(serve, "readv", {"r": [args]}, ns, tk) if ns == "default" else \
                _miss(Pool().call(serve, "readv", {"r": [args]}, ns, tk))


def _miss(reply) -> None:
    """A batch's only item not served: raise NotHere as a single read would."""
    result, payload = reply
    assert result["items"] == [{"miss": 1}] and not payload
    raise NotHere("missed")


def test_a_dataloader_reads_each_batch_at_once(cluster, dataset_files):
    from torch.utils.data import DataLoader

    from fluidcache.integrations.torch import FluidDataset
    ds = FluidDataset("fluid://mixed", filesystem=_tcp(), transform=len)
    calls = []
    ds_getitems = ds.__getitems__

    def getitems(indices):                  # in the loader's own process (no workers)
        calls.append(len(indices))
        return ds_getitems(indices)

    ds.__getitems__ = getitems
    sizes = {p: len(dataset_files[p.removeprefix("mixed/")]) for p in ds.paths}
    got = [n for batch in DataLoader(ds, batch_size=5, collate_fn=list) for n in batch]
    assert got == [sizes[p] for p in ds.paths] and calls and max(calls) == 5
    loader = DataLoader(FluidDataset("fluid://mixed", filesystem=_tcp()), batch_size=4,
                        num_workers=2, shuffle=True, collate_fn=list)
    for _ in range(2):                      # forked loader processes, two epochs
        seen = [d for batch in loader for d in batch]
        assert sorted(seen) == sorted(dataset_files.values())
