"""Starting and stopping a cluster: the shell behind `fluidcache start` and `stop`.

Local mode (no --address): a supervisor process of ours, in its own session, starts a
local Ray instance as its driver, deploys the master and the workers as detached named
actors, writes the discovery file, and waits; `stop` sends it SIGTERM, and it kills the
actors and shuts Ray down, leaving no process behind. The workers give their memory
tiers back first unless `stop --keep-cache` asked to keep them (`stop.json` in the
home says so to the supervisor).
Cluster mode (--address ADDR): the CLI joins the Ray cluster as a short-lived driver,
deploys the master (which puts a worker on every alive node) and leaves them running.
The master makes workers through `spawn_worker`, handed to it here: the master package
never imports the worker's.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import names
from .client import discovery
from .config import Config, default_home
from .errors import ClusterNotRunning, FluidError, InvalidRequest, Unavailable

log = logging.getLogger(__name__)


def deploy(config: Config, token: str | None = None) -> dict:
    """With Ray initialized: the master (created if absent) and one worker per node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .master.actor import MasterActor

    try:
        master = ray.get_actor(names.MASTER_ACTOR, namespace=names.RAY_NAMESPACE)
    except ValueError:
        master = MasterActor.options(
            name=names.MASTER_ACTOR, namespace=names.RAY_NAMESPACE, lifetime="detached",
            max_restarts=-1, num_cpus=0,
            # hard: Ray 2.60 placed a soft-affine, zero-CPU actor on another node here
            scheduling_strategy=NodeAffinitySchedulingStrategy(head_node_id(), soft=False),
        ).remote(config.to_dict(), token, spawn_worker)
    workers = ray.get(master.deploy.remote(), timeout=180)
    return {"master": ray.get(master.address.remote()), "namespace": "default",
            "token": ray.get(master.token.remote()), "workers": workers,
            "ray_address": ray.get_runtime_context().gcs_address}


def spawn_worker(node_id: str, config: dict):
    """A detached worker actor pinned to Ray node `node_id` (the master calls this for a
    node without a worker; `config` carries the cluster id and the worker secret)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .worker.actor import WorkerActor

    return WorkerActor.options(
        name=names.worker_actor(node_id), namespace=names.RAY_NAMESPACE, lifetime="detached",
        max_restarts=-1, max_task_retries=0, num_cpus=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    ).remote(config, node_id)


def head_node_id() -> str:
    """The Ray head node: the master lives there (the node that stays while workers come
    and go), not on whichever node this driver happened to attach to."""
    import ray
    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            return node["NodeID"]
    return ray.get_runtime_context().get_node_id()


def undeploy(keep_cache: bool = False) -> None:
    import ray
    try:
        master = ray.get_actor(names.MASTER_ACTOR, namespace=names.RAY_NAMESPACE)
    except ValueError:
        return
    try:
        ray.get(master.shutdown.remote(keep_cache), timeout=60)
    finally:
        ray.kill(master, no_restart=True)


def running() -> dict | None:
    """The discovery info of a cluster that answers, else None."""
    info = discovery.read()
    if not info:
        return None
    from .client.conn import Pool
    try:
        Pool(connect_timeout=2, request_timeout=5).call(info["master"], "ping")
    except (FluidError, KeyError):
        return None
    return info


def start(config: Config, address: str | None = None, dashboard: bool = True,
          timeout: float = 180.0, token: str | None = None) -> dict:
    """`token`: the `default` namespace's token for a new master (random if None)."""
    if running():
        raise InvalidRequest(f"a cluster is already running ({discovery.discovery_path()}); "
                             "run `fluidcache stop` first")
    if address:
        import ray
        ray.init(address=address, namespace=names.RAY_NAMESPACE, log_to_driver=False)
        try:
            info = dict(deploy(config, token), supervisor=None)
        finally:
            ray.shutdown()
        discovery.write(info)
        return info
    home = default_home()
    home.mkdir(parents=True, exist_ok=True)
    discovery.remove()
    cfg_path = home / "start-config.json"
    cfg_path.write_text(json.dumps(config.to_dict()))
    log_path = home / "supervisor.log"
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fluidcache.cluster", str(cfg_path),
             "1" if dashboard else "0"],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = discovery.read()
        if info and info.get("supervisor") == proc.pid:
            return info
        if proc.poll() is not None:
            raise Unavailable(f"the cluster failed to start; see {log_path}:\n"
                              + _tail(log_path))
        time.sleep(0.2)   # polling for the supervisor's discovery file (a condition)
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # the supervisor and what it started (Ray)
    except ProcessLookupError:
        pass
    proc.wait()
    raise Unavailable(f"the cluster did not start in {timeout:.0f}s; see {log_path}")


def _stop_request() -> Path:
    return default_home() / "stop.json"


def stop(timeout: float = 60.0, keep_cache: bool = False) -> bool:
    """Stop the cluster the discovery file names. False if there was none. The memory
    tiers are given back unless `keep_cache`."""
    info = discovery.read()
    if not info:
        return False
    pid = info.get("supervisor")
    if pid:
        if not is_our_supervisor(pid, info.get("supervisor_started")):
            # after a crash or a reboot the pid may be anyone's now: never signal it
            log.warning("the recorded supervisor (pid %s) is gone; removing its record", pid)
            discovery.remove()
            return True
        discovery.write({"keep_cache": keep_cache}, _stop_request())
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            discovery.remove()
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.2)   # polling for the supervisor's exit (a condition)
        if alive(pid) and is_our_supervisor(pid, info.get("supervisor_started")):
            os.killpg(pid, signal.SIGKILL)
    else:
        import ray
        try:
            ray.init(address=info["ray_address"], namespace=names.RAY_NAMESPACE,
                     log_to_driver=False)
        except Exception as exc:
            raise ClusterNotRunning(
                f"cannot reach Ray at {info.get('ray_address')}: {exc}") from exc
        try:
            undeploy(keep_cache)
        finally:
            ray.shutdown()
    discovery.remove()
    return True


def process_started(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, from /proc), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat.rsplit(b")", 1)[1].split()[19])


def is_our_supervisor(pid: int, started: int | None) -> bool:
    """Is `pid` still the supervisor `start` recorded (same start time, our command)?"""
    if process_started(pid) is None or (started is not None and
                                        process_started(pid) != started):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"fluidcache.cluster" in f.read()
    except OSError:
        return False


def alive(pid: int) -> bool:
    """Is process `pid` running (one of another user counts; a zombie child of ours
    does not)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def _tail(path, n: int = 15) -> str:
    try:
        return "\n".join(open(path, errors="replace").read().splitlines()[-n:])
    except OSError:
        return ""


def _supervise(cfg_path: str, dashboard: bool) -> int:
    import ray
    config = Config.from_dict(json.loads(open(cfg_path).read()))
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    # address="local": always a new instance of our own, even when RAY_ADDRESS or
    # /tmp/ray/ray_current_cluster names another one (ray.init() would join that)
    discovery.remove(_stop_request())          # a request left by an earlier run is not ours
    ctx = ray.init(address="local", namespace=names.RAY_NAMESPACE, include_dashboard=dashboard,
                   log_to_driver=False, configure_logging=False)
    try:
        info = deploy(config)
        info["supervisor"] = os.getpid()
        info["supervisor_started"] = process_started(os.getpid())
        if dashboard and getattr(ctx, "dashboard_url", None):
            info["dashboard"] = f"http://{ctx.dashboard_url}"
        discovery.write(info)
        print(f"fluidcache supervisor {os.getpid()} serving at {info['master']}", flush=True)
        stopping.wait()
    finally:
        request = discovery.read(_stop_request()) or {}
        discovery.remove(_stop_request())
        try:
            undeploy(bool(request.get("keep_cache")))
        except Exception as exc:  # noqa: BLE001 - shutting down anyway
            print(f"undeploy: {exc}", flush=True)
        ray.shutdown()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(_supervise(sys.argv[1], sys.argv[2] == "1"))
