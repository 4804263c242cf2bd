"""The master is killed (SIGKILL): Ray restarts it, it replays its journal, binds the
same port, the workers re-register through their heartbeats, and reads go on."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from ..helpers import cli_env, digests, read_digests, wait_for

pytestmark = pytest.mark.integration


def test_master_killed_comes_back_with_datasets_and_tokens(tmp_path, moto, dataset_files):
    env = dict(os.environ, FLUIDCACHE_HOME=str(tmp_path / "home"))
    cli_env(env, "start", "--mem", "16MiB", "--mem-path", str(tmp_path / "mem"),
         "--ssd", f"{tmp_path}/ssd:64MiB", "--block-size", "1MiB", "--no-dashboard")
    try:
        opts = [f"--option={k}={v}" for k, v in moto.options().items()]
        cli_env(env, "dataset", "create", "d", "--mount", "/=s3://fc-test/ds", *opts)
        cli_env(env, "dataset", "create", "k", "--mount", "/=s3://fc-test/kept", *opts,
                "--write-mode", "must-cache")
        cli_env(env, "dataset", "create", "up", "--mount", "/=s3://fc-test/uploaded", *opts,
                "--write-mode", "async-through")
        _fluid(env, "fs.pipe_file('fluid://k/scratch/a.bin', b'kept' * 999)\n"
               "fs.pipe_file('fluid://up/u.bin', b'up' * 999)\n"
               "fs.sync('fluid://up')")
        want = digests(dataset_files)
        warm = sorted(dataset_files)[: len(dataset_files) // 2]
        assert read_digests(env, "d", warm) == {n: want[n] for n in warm}
        cli_env(env, "pin", "fluid://d/images")
        cli_env(env, "ttl", "fluid://d/tables", "1d")
        before = json.loads(cli_env(env, "status", "--json").stdout)
        info = json.loads((tmp_path / "home" / "cluster.json").read_text())

        os.kill(before["master"]["pid"], signal.SIGKILL)

        def back():
            p = cli_env(env, "status", "--json", check=False)
            if p.returncode != 0:
                return None
            st = json.loads(p.stdout)
            return st if st["master"]["pid"] != before["master"]["pid"] and \
                st["workers"] and all(w["alive"] for w in st["workers"]) else None

        after = wait_for(back, what="the master to come back with its workers")
        assert after["master"]["address"] == before["master"]["address"] == info["master"]
        assert [d["name"] for d in after["datasets"]] == ["d", "k", "up"]   # replayed
        assert after["datasets"][0]["mounts"] == {"/": "s3://fc-test/ds"}
        shown = json.loads(cli_env(env, "dataset", "show", "d").stdout)
        assert shown["pins"] == ["images"] and list(shown["ttls"]) == ["tables"]  # journaled
        # the new master knows what the worker holds again (a full block report)
        warm_bytes = sum(len(dataset_files[n]) for n in warm)
        wait_for(lambda: json.loads(cli_env(env, "status", "--json").stdout)["datasets"][0][
            "cached_bytes"] == warm_bytes, timeout=60, what="the full block report")
        # the token in the discovery file still opens the namespace; all reads go on,
        # cached (short-circuit and through the worker) and cold alike
        assert read_digests(env, "d", dataset_files) == want
        assert read_digests(env, "d", dataset_files, short_circuit=False) == want
        # a file kept only in the cache: its worker told the new master again
        wait_for(lambda: _fluid(env, "print(fs.cat('fluid://k/scratch/a.bin') == "
                                "b'kept' * 999)", check=False) == "True", timeout=60,
                 what="the kept file listed again by the restarted master")
        # one uploaded before the kill is the store's, not told again as kept
        assert _fluid(env, "print(fs.cat('fluid://up/u.bin') == b'up' * 999, "
                      "fs.sync('fluid://up', timeout=30)['pending'])") == "True 0"
        bad = cli_env(dict(env, FLUIDCACHE_TOKEN="wrong"), "dataset", "ls", check=False)
        assert bad.returncode != 0 and "token" in bad.stderr
    finally:
        cli_env(env, "stop", check=False)


def _fluid(env: dict, code: str, check: bool = True) -> str:
    """Run `code` with `fs` a fluid filesystem, in a new process with `env`."""
    p = subprocess.run([sys.executable, "-c", "import fsspec\n"
                        "fs = fsspec.filesystem('fluid')\n" + code], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 or not check, p.stderr
    return p.stdout.strip()
