"""The CLI's contract: status --json shape, dataset verbs, start/stop."""
from __future__ import annotations

import json

import pytest

from ..helpers import wait_for

pytestmark = pytest.mark.integration


def test_status_json_shape(cluster, cli, fluid_fs, dataset_files):
    fluid_fs.cat_file("fluid://mixed/images/img000.jpg")
    st = json.loads(cli("status", "--json").stdout)
    assert ":" in st["master"]["address"]
    (w,) = st["workers"]
    for key in ("id", "node_id", "host", "alive", "address", "tiers", "stats"):
        assert key in w
    assert w["alive"] is True
    assert [t["name"] for t in w["tiers"]] == ["MEM", "SSD"]
    for t in w["tiers"]:
        assert set(t) >= {"name", "path", "capacity", "used", "blocks"}
        assert 0 <= t["used"] <= t["capacity"]
    assert w["tiers"][0]["capacity"] == 64 * 1024 * 1024
    for key in ("hits", "misses", "bytes_served", "ufs_bytes_read", "evictions"):
        assert isinstance(w["stats"][key], int)
    mixed = next(d for d in st["datasets"] if d["name"] == "mixed")
    assert mixed["namespace"] == "default" and mixed["mounts"] == {"/": "s3://fc-test/ds"}

    def reported():   # block reports reach the master with the workers' heartbeats
        s = json.loads(cli("status", "--json").stdout)
        d = next(d for d in s["datasets"] if d["name"] == "mixed")
        return d if d["cached_bytes"] >= len(dataset_files["images/img000.jpg"]) else None

    mixed = wait_for(reported, timeout=60, what="the block report of a read")
    assert set(mixed["cached_by_worker"]) == {w["id"]}
    assert "secret" not in json.dumps(st) and "testing" not in json.dumps(st)


def test_status_table(cluster, cli):
    out = cli("status").stdout
    assert "workers" in out and "MEM" in out and "datasets" in out and "mixed" in out
    assert "hit%" in out and "alive" in out


def test_dataset_verbs(cluster, cli, moto):
    opts = [f"--option={k}={v}" for k, v in moto.options().items()]
    cli("dataset", "create", "scratch", "--mount", "/=s3://fc-test/ds/images", *opts)
    assert "scratch" in cli("dataset", "ls").stdout
    shown = json.loads(cli("dataset", "show", "scratch").stdout)
    assert shown["mounts"] == {"/": "s3://fc-test/ds/images"}
    assert "img000.jpg" in cli("ls", "fluid://scratch").stdout
    again = cli("dataset", "create", "scratch", "--mount", "/=s3://fc-test/ds", *opts, check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
    cli("dataset", "rm", "scratch")
    assert "scratch" not in cli("dataset", "ls").stdout


def test_dataset_create_checks_the_mount(cluster, cli, moto):
    opts = [f"--option={k}={v}" for k, v in moto.options().items()]
    p = cli("dataset", "create", "ghost", "--mount", "/=s3://no-such-bucket/x", *opts, check=False)
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1


def test_start_refuses_a_second_cluster(cluster, cli):
    p = cli("start", "--no-dashboard", check=False)
    assert p.returncode != 0 and "already running" in p.stderr


def test_namespace_verbs(cluster, cli):
    token = cli("namespace", "create", "cli-team").stdout.strip()
    assert len(token) >= 32
    assert "cli-team" in cli("namespace", "ls").stdout.split()
    again = cli("namespace", "create", "cli-team", check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
    import os
    env = dict(os.environ, FLUIDCACHE_TOKEN=token, FLUIDCACHE_NAMESPACE="cli-team")
    assert cli("dataset", "ls", env=env).stdout.strip() == ""          # sees none of default's
