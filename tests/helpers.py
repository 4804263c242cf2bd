"""Helpers shared by the integration tests: run the CLI, wait on a condition, read files
through fluid:// in a fresh process (as a user's job would) and hash what came back."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time


def run_cli(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "fluidcache.cli", *args], capture_output=True,
                       text=True, env=env, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"fluidcache {' '.join(args)} failed ({p.returncode}):\n"
                             f"{p.stdout}\n{p.stderr}")
    return p


def cli_env(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """run_cli with a cluster's environment (its FLUIDCACHE_HOME) first."""
    return run_cli(*args, env=env, check=check)


def status(env: dict | None = None) -> dict:
    return json.loads(run_cli("status", "--json", env=env).stdout)


@contextlib.contextmanager
def home_env(home: str):
    """FLUIDCACHE_HOME set to `home` in this process for the block (the in-process API
    finds that cluster), restored after."""
    old = os.environ.get("FLUIDCACHE_HOME")
    os.environ["FLUIDCACHE_HOME"] = home
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FLUIDCACHE_HOME", None)
        else:
            os.environ["FLUIDCACHE_HOME"] = old


@contextlib.contextmanager
def small_cluster(root, moto, name: str, files: dict[str, bytes], *start_args: str):
    """A cluster of its own under `root` (`fluidcache start` with `start_args` and a
    memory tier under /dev/shm), `files` in bucket fc-NAME mounted as dataset NAME;
    yields the environment its CLI and clients use. Stopped and cleaned after."""
    import shutil
    env = dict(os.environ, FLUIDCACHE_HOME=str(root / "home"))
    mem = f"/dev/shm/fc-{name}-{os.getpid()}" if os.path.isdir("/dev/shm") \
        else str(root / "mem")
    s3 = moto.filesystem()
    s3.mkdir(f"fc-{name}")
    s3.pipe({f"fc-{name}/{k}": v for k, v in files.items()})
    run_cli("start", "--mem-path", mem, "--no-dashboard", *start_args, env=env)
    try:
        opts = [f"--option={k}={v}" for k, v in moto.options().items()]
        run_cli("dataset", "create", name, "--mount", f"/=s3://fc-{name}", "--sync",
                "never", *opts, env=env)
        yield env
    finally:
        run_cli("stop", env=env, check=False)
        shutil.rmtree(mem, ignore_errors=True)


def wait_for(predicate, timeout: float = 120.0, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        value = seen = predicate()
        if value:
            return value
        time.sleep(0.3)   # polling a condition, not sleeping instead of it
    raise AssertionError(f"timed out waiting for {what} (last: {seen!r:.2000})")


def digests(files: dict[str, bytes]) -> dict[str, str]:
    return {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}


_READER = """
import fsspec, hashlib, json, sys
fs = fsspec.filesystem("fluid", short_circuit=sys.argv[2] == "1")
out = {n: hashlib.sha256(fs.cat_file(sys.argv[1] + n)).hexdigest()
       for n in json.loads(sys.argv[3])}
fs.client.flush()
print(json.dumps(out))
"""


def read_digests(env: dict, dataset: str, names, short_circuit: bool = True) -> dict[str, str]:
    """sha256 of each `fluid://dataset/name`, read by a new process with `env`."""
    p = subprocess.run([sys.executable, "-c", _READER, f"fluid://{dataset}/",
                        "1" if short_circuit else "0", json.dumps(sorted(names))],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)
