"""PyTorch, Ray Data, scheduling and metrics on the session cluster; the examples run as
their users would run them (a new process each)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.request

import pytest

from ..helpers import wait_for

pytestmark = pytest.mark.integration
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _example(name: str, *args: str, timeout: float = 300) -> str:
    # a driver joining the cluster's Ray (token auth on, as Ray 2.60 local clusters are)
    env = dict(os.environ, RAY_AUTH_MODE="token")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name), *args],
                       capture_output=True, text=True, timeout=timeout, env=env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return p.stdout


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_dataloader_with_each_start_method_reads_every_sample_right(cluster, dataset_files,
                                                                    method):
    out = _example("train_torch.py", "fluid://mixed/images", "--epochs", "2",
                   "--start-method", method)
    want = sorted(hashlib.sha256(b).hexdigest() for n, b in dataset_files.items()
                  if n.startswith("images/"))
    epochs = [line for line in out.splitlines() if line.startswith("digests ")]
    assert len(epochs) == 2
    for line in epochs:
        assert line.removeprefix("digests ").split(",") == want


def test_ray_data_reads_parquet_and_binary_files_through_fluid(cluster, dataset_files):
    import io

    import pandas as pd
    out = _example("ray_data_pipeline.py", "fluid://mixed/tables/data.parquet",
                   "fluid://mixed/images")
    got = json.loads(out.strip().splitlines()[-1])
    df = pd.read_parquet(io.BytesIO(dataset_files["tables/data.parquet"]))
    assert got["rows"] == len(df) and got["value_sum"] == pytest.approx(df["value"].sum())
    want = {n.removeprefix("images/"): len(b) for n, b in dataset_files.items()
            if n.startswith("images/")}
    assert {p.rsplit("/", 1)[-1]: n for p, n in got["files"].items()} == want


def test_scheduling_example_sends_each_group_to_its_node(cluster, dataset_files):
    fs = cluster["client"].filesystem()
    for n in dataset_files:                      # cached, so every file has a node
        if n.startswith("images/"):
            fs.cat_file(f"fluid://mixed/{n}")
    fs.client.flush()
    node = cluster["client"].status()["workers"][0]["node_id"]
    from fluidcache.scheduling import locate
    urls = [f"fluid://mixed/{n}" for n in dataset_files if n.startswith("images/")]
    wait_for(lambda: all(locate(urls).values()), timeout=30, what="every file's report")
    got = json.loads(_example("scheduling.py", "fluid://mixed/images").strip().splitlines()[-1])
    assert got["groups"] == {node: 12} and got["ran_on"] == [node]
    assert got["strategy_for_first"] == node
    want = {f"fluid://mixed/{n}": hashlib.sha256(b).hexdigest()
            for n, b in dataset_files.items() if n.startswith("images/")}
    assert got["digests"] == want


def test_cache_aware_sampler_over_the_cluster(cluster, dataset_files):
    from fluidcache.integrations.torch import CacheAwareDistributedSampler, FluidDataset
    ds = FluidDataset("fluid://mixed/images")
    for i in range(len(ds)):
        assert ds[i] == dataset_files[ds.paths[i].removeprefix("mixed/")]
    node = cluster["client"].status()["workers"][0]["node_id"]
    wait_for(lambda: all(h == node for h in CacheAwareDistributedSampler(
        ds, 2, 0, rank_nodes=[node, "elsewhere"]).homes), timeout=30, what="block reports")
    for ranks in (2, 3):
        nodes = [node] + ["elsewhere"] * (ranks - 1)
        samplers = [CacheAwareDistributedSampler(ds, ranks, r, seed=1, rank_nodes=nodes)
                    for r in range(ranks)]
        parts = [list(s) for s in samplers]
        assert sorted(sum(parts, [])) == list(range(len(ds)))          # once each
        assert samplers[0].local_share() == 1.0                         # all cached here
        assert all(s.local_share() == 0.0 for s in samplers[1:])


def test_metrics_reach_rays_prometheus_endpoint(cluster, dataset_files):
    fs = cluster["client"].filesystem()
    for _ in range(2):                       # the second pass hits (short-circuit, reported)
        for n in dataset_files:
            fs.cat_file(f"fluid://mixed/{n}")
    fs.client.flush()
    info = json.loads((cluster["home"] / "cluster.json").read_text())
    probe = ("import ray, json, fluidcache; fluidcache.init_ray(address=%r, "
             "log_to_driver=False); "
             "print(json.dumps([n['MetricsExportPort'] for n in ray.nodes() if n['Alive']]))"
             % info["ray_address"])
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, RAY_AUTH_MODE="token"))
    assert p.returncode == 0, p.stderr[-2000:]
    ports = json.loads(p.stdout.strip().splitlines()[-1])

    def series() -> dict[str, float] | None:
        out: dict[str, float] = {}
        for port in ports:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                              timeout=5).read().decode()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("fluidcache_") or line.startswith("ray_fluidcache_"):
                    name, _, value = line.rpartition(" ")
                    metric = name.split("{")[0].removeprefix("ray_")
                    out[metric] = out.get(metric, 0.0) + float(value)
        hits = sum(v for k, v in out.items() if k.startswith("fluidcache_hits"))
        used = out.get("fluidcache_tier_used_bytes", 0)
        seen["last"] = out
        return out if hits > 0 and used > 0 else None

    seen: dict = {}

    try:
        found = wait_for(series, timeout=90, what="fluidcache_ series at Ray's metrics endpoint")
    except AssertionError:
        raise AssertionError(f"ports {ports}; last seen: {seen.get('last')}") from None
    assert any(k.startswith("fluidcache_under_store_bytes") for k in found)
    assert found.get("fluidcache_tier_capacity_bytes", 0) > 0


def test_checkpoints_load_through_fluid_and_cold_blocks_are_fetched_once(cluster, moto):
    """`load_safetensors` and `load` (torch.load) of checkpoints in the store; readers
    of the same cold file at once cause one store read per block; the example loads the
    file on every node."""
    import io
    import threading

    import fsspec
    import torch
    from safetensors.torch import save

    from fluidcache.integrations.torch import load, load_safetensors
    g = torch.Generator().manual_seed(0)
    tensors = {"w1": torch.randn(512, 1024, generator=g), "b1": torch.randn(1024, generator=g),
               "emb": torch.randint(0, 100, (700, 300), generator=g),
               "bf": torch.randn(64, 64, generator=g).to(torch.bfloat16)}   # as most LLMs
    body = save(tensors)                                    # ~3.7 MiB: four 1 MiB blocks
    pt = io.BytesIO()
    torch.save(tensors, pt)
    s3 = moto.filesystem()
    s3.pipe_file("fc-test/models/m.safetensors", body)        # outside `mixed`'s mount
    s3.pipe_file("fc-test/models/m.pt", pt.getvalue())
    cluster["client"].create_dataset("models", {"/": "s3://fc-test/models"}, moto.options())

    def store_bytes() -> int:
        return sum(w["stats"]["ufs_bytes_read"] for w in cluster["client"].status()["workers"])

    before, got, errors = store_bytes(), [], []

    def reader():
        try:
            fs = fsspec.filesystem("fluid", skip_instance_cache=True)
            got.append(load_safetensors("fluid://models/m.safetensors", filesystem=fs))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(got) == 4
    for loaded in got:
        assert loaded.keys() == tensors.keys()
        assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert store_bytes() - before == len(body)              # one store read per block

    fs = fsspec.filesystem("fluid", skip_instance_cache=True)
    loaded = load("fluid://models/m.pt", filesystem=fs)     # weights_only by default
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    with fs.open("fluid://models/m.pt", "rb") as f:  # torch.load reading as it parses
        loaded = torch.load(f, weights_only=True)
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)

    out = _example("load_model.py", "fluid://models/m.safetensors")
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    want = hashlib.sha256()
    for name in sorted(tensors):
        want.update(name.encode() + tensors[name].view(-1).view(torch.uint8).numpy().tobytes())
    assert results and all(r["sha256"] == want.hexdigest() and r["tensors"] == len(tensors)
                           for r in results)
