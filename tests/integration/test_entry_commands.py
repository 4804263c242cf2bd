"""The image's entry commands outside Kubernetes, run the way the chart runs them: a
`fluidcache serve head` process (Ray head + master, datasets created from a file, Ray
token auth from the environment) and a `fluidcache serve worker` process joining it on
loopback; a file read through them; SIGTERM stops both cleanly."""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys

import pytest

from fluidcache.testing.s3 import free_port

from ..helpers import run_cli, wait_for

pytestmark = pytest.mark.integration


def test_serve_head_and_worker_like_the_chart(tmp_path, moto, dataset_files):
    home = tmp_path / "home"
    env = dict(os.environ, FLUIDCACHE_HOME=str(home), RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=secrets.token_urlsafe(32),
               FLUIDCACHE_TOKEN=secrets.token_urlsafe(32),
               AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    config = {"tiers": [{"medium": "MEM", "path": str(tmp_path / "mem"), "quota": "64MiB"}],
              "block_size": "1MiB", "host": "127.0.0.1", "master_port": free_port(),
              "journal_dir": str(tmp_path / "journal"),
              "node_selector": {"resource:fluidcache_worker": ""}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "datasets.json").write_text(json.dumps([{
        "name": "d", "mounts": {"/": "s3://fc-test/ds"},
        "options": {"endpoint_url": moto.endpoint, "key": "${AWS_ACCESS_KEY_ID}",
                    "secret": "${AWS_SECRET_ACCESS_KEY}"}}]))
    ray_port = free_port()
    head = subprocess.Popen([sys.executable, "-m", "fluidcache.cli", "serve", "head",
                             "--config", str(tmp_path / "config.json"),
                             "--datasets", str(tmp_path / "datasets.json"),
                             "--ray-port", str(ray_port), "--no-dashboard"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    worker = None
    try:
        wait_for(lambda: head.poll() is not None or
                 run_cli("health", env=env, check=False).returncode == 0,
                 timeout=180, what="the head's master to answer")
        assert head.poll() is None, head.stdout.read()
        worker = subprocess.Popen([sys.executable, "-m", "fluidcache.cli", "serve", "worker",
                                   "--head", f"127.0.0.1:{ray_port}"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        st = wait_for(lambda: (s := json.loads(run_cli("status", "--json", env=env).stdout))
                      and [w for w in s["workers"] if w["alive"]] and s,
                      timeout=180, what="a cache worker on the joined node")
        assert len(st["workers"]) == 1                 # on the worker node, not the head
        address = st["workers"][0]["address"]
        assert run_cli("health", "--worker", address, env=env, check=False).returncode == 0
        info = json.loads((home / "cluster.json").read_text())
        assert info["token"] == env["FLUIDCACHE_TOKEN"]        # the chart's token Secret
        reader = ("import fsspec, sys; fs = fsspec.filesystem('fluid'); "
                  "sys.stdout.buffer.write(fs.cat_file('fluid://d/multi/big.bin'))")
        out = subprocess.run([sys.executable, "-c", reader], env=env, capture_output=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout == dataset_files["multi/big.bin"]
    finally:
        for p in (worker, head):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = [p.wait(120) if p is not None else 0 for p in (worker, head)]
    assert codes == [0, 0], head.stdout.read()[-3000:]
    assert not (home / "cluster.json").exists()       # the head undeployed and cleaned up
