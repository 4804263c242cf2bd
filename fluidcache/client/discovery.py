"""Finding the master: explicit arguments, then the environment, then the discovery file
that `fluidcache start` writes, then (inside a Ray job) the named master actor.

Owns: the discovery file's place and format (JSON, mode 0600: it holds a token).
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import names
from ..config import default_home
from ..errors import ClusterNotRunning


@dataclass(frozen=True, slots=True)
class Endpoint:
    master: str
    namespace: str
    token: str | None


def discovery_path() -> Path:
    return default_home() / "cluster.json"


def write(info: dict, path: Path | None = None) -> Path:
    path = path or discovery_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=2)
    os.replace(tmp, path)
    return path


def read(path: Path | None = None) -> dict | None:
    try:
        return json.loads((path or discovery_path()).read_text())
    except (OSError, ValueError):
        return None


def ray_address() -> str:
    """The Ray address of the cluster `fluidcache start` made (for `ray.init(address=...)`
    in a driver that runs tasks next to the cache), else "auto"."""
    info = read()
    return (info or {}).get("ray_address") or "auto"


def init_ray(**kwargs):
    """`ray.init` joined to the Ray instance of the cluster `fluidcache start` made (else
    `address="auto"`). Ray 2.60 local clusters use token auth: a joining driver must say
    so (`RAY_AUTH_MODE=token`), and then reads the token from `~/.ray/auth_token` or
    `RAY_AUTH_TOKEN`. Ray reads the mode when it is imported: set it in the environment
    of a driver that imports ray first; this sets it when ray is not imported yet."""
    if "ray" not in sys.modules and "RAY_AUTH_MODE" not in os.environ and (
            os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or
            (Path.home() / ".ray" / "auth_token").exists()):
        os.environ["RAY_AUTH_MODE"] = "token"
    import ray
    kwargs.setdefault("address", ray_address())
    return ray.init(**kwargs)


def remove(path: Path | None = None) -> None:
    try:
        (path or discovery_path()).unlink()
    except FileNotFoundError:
        pass


def find(address: str | None = None, token: str | None = None,
         namespace: str | None = None) -> Endpoint:
    env = os.environ
    namespace = namespace or env.get("FLUIDCACHE_NAMESPACE")
    token = token or env.get("FLUIDCACHE_TOKEN")
    address = address or env.get("FLUIDCACHE_MASTER")
    info = read()
    if info and (address is None or address == info.get("master")):
        address = address or info["master"]
        if token is None and (namespace or "default") == info.get("namespace", "default"):
            token = info.get("token")
    if address is None:
        address, token = _from_ray(namespace or "default", token)
    return Endpoint(address, namespace or "default", token)


def _from_ray(namespace: str, token: str | None) -> tuple[str, str | None]:
    try:
        import ray
        if not ray.is_initialized():
            raise ClusterNotRunning("")
        master = ray.get_actor(names.MASTER_ACTOR, namespace=names.RAY_NAMESPACE)
        address = ray.get(master.address.remote(), timeout=10)
        if token is None:
            token = ray.get(master.token.remote(namespace), timeout=10)
        return address, token
    except Exception:  # noqa: BLE001 - any failure means: no cluster found this way
        raise ClusterNotRunning(
            "no fluidcache cluster found: run `fluidcache start`, or set FLUIDCACHE_MASTER "
            f"(looked at {discovery_path()})") from None
