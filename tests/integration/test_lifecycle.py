"""`fluidcache start` / `stop` as a user runs them: a cluster of its own (not the session's),
in local mode and joined to an existing Ray cluster; `stop` leaves no process behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ..helpers import cli_env

pytestmark = pytest.mark.integration


def _session_members(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    return [int(p) for p, s in (line.split() for line in out.splitlines()) if int(s) == sid]


def _env(tmp_path) -> dict:
    return dict(os.environ, FLUIDCACHE_HOME=str(tmp_path / "home"))


def test_local_start_stop_leaves_nothing(tmp_path, moto, dataset_files):
    env = _env(tmp_path)
    cli_env(env, "start", "--mem", "16MiB", "--mem-path", str(tmp_path / "mem"),
         "--ssd", f"{tmp_path}/ssd:32MiB", "--no-dashboard")
    info = json.loads((tmp_path / "home" / "cluster.json").read_text())
    assert oct((tmp_path / "home" / "cluster.json").stat().st_mode & 0o777) == "0o600"
    sup = info["supervisor"]
    try:
        assert len(_session_members(sup)) > 1          # the supervisor and Ray's processes
        opts = [f"--option={k}={v}" for k, v in moto.options().items()]
        cli_env(env, "dataset", "create", "d", "--mount", "/=s3://fc-test/ds/small", *opts)
        assert "a.txt" in cli_env(env, "ls", "fluid://d").stdout
        _read(env, "fluid://d/a.txt")
        assert _mem_blocks(env) >= 1
    finally:
        cli_env(env, "stop")
    assert _session_members(sup) == []
    assert not (tmp_path / "mem").exists()             # the memory tier was given back
    assert not (tmp_path / "home" / "cluster.json").exists()
    p = cli_env(env, "status", check=False)
    assert p.returncode == 1 and "fluidcache start" in p.stderr


def _read(env: dict, url: str) -> None:
    code = f"import fsspec; fsspec.filesystem('fluid').cat_file({url!r})"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


def _mem_blocks(env: dict) -> int:
    st = json.loads(cli_env(env, "status", "--json").stdout)
    return sum(t["blocks"] for w in st["workers"] for t in w["tiers"] if t["name"] == "MEM")


def test_a_kept_memory_tier_is_adopted_by_its_own_cluster_only(tmp_path, moto, dataset_files):
    mem = str(tmp_path / "mem")
    a, b = _env(tmp_path / "a"), _env(tmp_path / "b")
    start = ["start", "--mem", "16MiB", "--mem-path", mem, "--no-dashboard"]
    opts = [f"--option={k}={v}" for k, v in moto.options().items()]
    cli_env(a, *start, "--ssd", f"{tmp_path}/ssd-a:32MiB")
    try:
        cli_env(a, "dataset", "create", "d", "--mount", "/=s3://fc-test/ds/small", *opts)
        _read(a, "fluid://d/a.txt")
        assert _mem_blocks(a) == 1
    finally:
        cli_env(a, "stop", "--keep-cache")
    assert os.path.isdir(mem)                          # kept for the next start
    cli_env(a, *start, "--ssd", f"{tmp_path}/ssd-a:32MiB")
    try:
        assert _mem_blocks(a) == 1                     # the same cluster finds its block
    finally:
        cli_env(a, "stop", "--keep-cache")
    cli_env(b, *start, "--ssd", f"{tmp_path}/ssd-b:32MiB")    # another cluster, same path
    try:
        assert _mem_blocks(b) == 0                     # never adopts another's blocks
    finally:
        cli_env(b, "stop")
    assert not os.path.exists(mem)


def test_join_an_existing_ray_cluster(tmp_path, moto, dataset_files):
    from ray.cluster_utils import Cluster

    ray_cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                                "include_dashboard": False})
    env = dict(_env(tmp_path), FLUIDCACHE_HOST="127.0.0.1")
    try:
        out = cli_env(env, "start", "--address", ray_cluster.address, "--mem", "16MiB",
                   "--mem-path", str(tmp_path / "mem"), "--ssd", f"{tmp_path}/ssd:32MiB").stdout
        assert "1 worker" in out
        info = json.loads((tmp_path / "home" / "cluster.json").read_text())
        assert info["supervisor"] is None and info["master"].startswith("127.0.0.1:")
        opts = [f"--option={k}={v}" for k, v in moto.options().items()]
        cli_env(env, "dataset", "create", "d", "--mount", "/=s3://fc-test/ds/multi", *opts)
        st = json.loads(cli_env(env, "status", "--json").stdout)
        assert [w["alive"] for w in st["workers"]] == [True]
        code = ("import fsspec; fs = fsspec.filesystem('fluid'); "
                "print(len(fs.cat_file('fluid://d/big.bin')))")
        got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=120)
        assert got.stdout.strip() == str(len(dataset_files["multi/big.bin"])), got.stderr
        cli_env(env, "stop")
        import ray
        ray.init(address=ray_cluster.address)
        try:
            named = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
            assert not any(n.startswith("fluidcache-") for n in named), named
        finally:
            ray.shutdown()
    finally:
        ray_cluster.shutdown()
