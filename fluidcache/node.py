"""The container image's entry commands: what the Helm chart runs in each pod.

    fluidcache serve head   [--config FILE] [--datasets FILE] [--ray-port 6379]
    fluidcache serve worker --head HOST:PORT
    fluidcache health [--worker HOST:PORT]

`serve head` starts a Ray head (`ray start --head --block`, a child process), deploys the
master and the workers into it (the master keeps one worker on every Ray node), creates
the datasets of a JSON file (values like `${AWS_SECRET_ACCESS_KEY}` are taken from the
environment, where Kubernetes puts Secrets) and waits. `serve worker` joins a Ray node to
the head; the master places this node's worker on it. On SIGTERM (a pod stopping) the
head undeploys the actors, then each stops its Ray node, and the process exits 0.
`health` pings the master (or a worker's data server) over the wire protocol: the
liveness and readiness probes.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

from .client.conn import Pool
from .errors import FluidError, InvalidRequest

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand(value):
    """`${NAME}` in strings (recursively) from the environment; unknown names stay empty."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: os.environ.get(m.group(1), ""), value)
    if isinstance(value, list):
        return [expand(v) for v in value]
    if isinstance(value, dict):
        return {k: expand(v) for k, v in value.items()}
    return value


def _ray() -> str:
    exe = shutil.which("ray")
    if exe is None:
        raise InvalidRequest("the `ray` command is not installed (pip install 'ray[default]')")
    return exe


def _wait_for_term(child: subprocess.Popen) -> None:
    """Block until SIGTERM/SIGINT or the child (Ray) exits."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set() and child.poll() is None:
        stop.wait(1.0)


def _stop_child(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.terminate()                  # `ray start --block` stops its processes
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def serve_head(config_path: str | None, datasets_path: str | None, ray_port: int,
               dashboard_host: str = "0.0.0.0", metrics_port: int | None = None,
               dashboard: bool = True) -> int:
    from . import cluster, config as cfgmod
    from .api import connect
    cfg = cfgmod.load(config_path)
    args = [_ray(), "start", "--head", f"--port={ray_port}", "--block",
            f"--dashboard-host={dashboard_host}", "--disable-usage-stats",
            f"--include-dashboard={'true' if dashboard else 'false'}"]
    if metrics_port:
        args.append(f"--metrics-export-port={metrics_port}")
    child = subprocess.Popen(args)
    try:
        address = f"127.0.0.1:{ray_port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                info = cluster.start(cfg, address, dashboard=False,
                                     token=os.environ.get("FLUIDCACHE_TOKEN") or None)
                break
            except FluidError as exc:          # Ray still coming up
                if time.monotonic() > deadline or child.poll() is not None:
                    raise InvalidRequest(f"the Ray head did not come up: {exc}") from None
                time.sleep(1.0)                # polling until Ray answers (a condition)
        print(f"fluidcache head: master {info['master']}, {len(info['workers'])} worker(s)",
              flush=True)
        if datasets_path:
            client = connect()
            existing = {d["name"] for d in client.datasets()}
            for d in expand(json.loads(open(datasets_path).read()) or []):
                if d["name"] in existing:
                    continue
                client.create_dataset(d["name"], d["mounts"], d.get("options") or {},
                                      d.get("replicas", 1), d.get("sync"),
                                      d.get("selector") or None,
                                      routing=d.get("routing", "partitioned"))
                print(f"fluidcache head: dataset {d['name']} created", flush=True)
        _wait_for_term(child)
    finally:
        try:
            cluster.stop()                     # the actors go first, then Ray
        except FluidError:
            pass
        _stop_child(child)
    return 0


WORKER_RESOURCE = "fluidcache_worker"    # a serve-worker node has it; the chart's config
                                         # selects `resource:fluidcache_worker` nodes


def serve_worker(head: str) -> int:
    child = subprocess.Popen([_ray(), "start", f"--address={head}", "--block",
                              "--disable-usage-stats",
                              f"--resources={json.dumps({WORKER_RESOURCE: 1})}"])
    try:
        _wait_for_term(child)
    finally:
        _stop_child(child)
    return 0


def health(worker: str | None = None, timeout: float = 5.0) -> int:
    """0 if the master (or the worker's data server at `worker`) answers a ping."""
    from .client.discovery import find
    try:
        address = worker or find().master
        result, _ = Pool(connect_timeout=timeout, request_timeout=timeout).call(address, "ping")
        ok = bool(result.get("pong"))
    except (FluidError, OSError) as exc:
        print(f"fluidcache health: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1
