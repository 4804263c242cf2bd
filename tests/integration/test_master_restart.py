"""The master is killed (SIGKILL): Ray restarts it, it replays its journal, binds the
same port, the workers re-register through their heartbeats, and reads go on."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration


def _cli(env, *args, check=True):
    p = subprocess.run([sys.executable, "-m", "fluidcache.cli", *args], capture_output=True,
                       text=True, env=env, timeout=300)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def _wait_for(predicate, timeout=120.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)   # polling a condition
    raise AssertionError(f"timed out waiting for {what}")


def _read(env, names, short_circuit=True) -> dict:
    code = ("import fsspec, json, sys, hashlib\n"
            f"fs = fsspec.filesystem('fluid', short_circuit={short_circuit})\n"
            "print(json.dumps({n: hashlib.sha256(fs.cat_file('fluid://d/' + n)).hexdigest()"
            " for n in json.loads(sys.argv[1])}))\n")
    p = subprocess.run([sys.executable, "-c", code, json.dumps(names)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_master_killed_comes_back_with_datasets_and_tokens(tmp_path, moto, dataset_files):
    import hashlib
    env = dict(os.environ, FLUIDCACHE_HOME=str(tmp_path / "home"))
    _cli(env, "start", "--mem", "16MiB", "--mem-path", str(tmp_path / "mem"),
         "--ssd", f"{tmp_path}/ssd:64MiB", "--block-size", "1MiB", "--no-dashboard")
    try:
        opts = [f"--option={k}={v}" for k, v in moto.options().items()]
        _cli(env, "dataset", "create", "d", "--mount", "/=s3://fc-test/ds", *opts)
        want = {n: hashlib.sha256(b).hexdigest() for n, b in dataset_files.items()}
        warm = sorted(dataset_files)[: len(dataset_files) // 2]
        assert _read(env, warm) == {n: want[n] for n in warm}
        before = json.loads(_cli(env, "status", "--json").stdout)
        info = json.loads((tmp_path / "home" / "cluster.json").read_text())

        os.kill(before["master"]["pid"], signal.SIGKILL)

        def back():
            p = _cli(env, "status", "--json", check=False)
            if p.returncode != 0:
                return None
            st = json.loads(p.stdout)
            return st if st["master"]["pid"] != before["master"]["pid"] and \
                st["workers"] and all(w["alive"] for w in st["workers"]) else None

        after = _wait_for(back, what="the master to come back with its workers")
        assert after["master"]["address"] == before["master"]["address"] == info["master"]
        assert [d["name"] for d in after["datasets"]] == ["d"]          # journal replayed
        assert after["datasets"][0]["mounts"] == {"/": "s3://fc-test/ds"}
        # the token in the discovery file still opens the namespace; all reads go on,
        # cached (short-circuit and through the worker) and cold alike
        assert _read(env, sorted(dataset_files)) == want
        assert _read(env, sorted(dataset_files), short_circuit=False) == want
        bad = _cli(dict(env, FLUIDCACHE_TOKEN="wrong"), "dataset", "ls", check=False)
        assert bad.returncode != 0 and "token" in bad.stderr
    finally:
        _cli(env, "stop", check=False)
