"""The Python API: `fluidcache.connect() -> Client`, with the CLI's verbs.

Owns: turning verbs into master calls and argument checks users get back at once.
Never: talk to Ray (clients are not Ray drivers) or to under stores.
"""
from __future__ import annotations

import json

from .client.discovery import find
from .client.fs import FluidFileSystem
from .client.reader import ClusterClient
from .errors import InvalidRequest
from .master.namespace import parse_mount


def _parse_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InvalidRequest(f"bad option {text!r}: use KEY=VALUE")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


class Client:
    def __init__(self, address: str | None = None, token: str | None = None,
                 namespace: str | None = None) -> None:
        self.endpoint = find(address, token, namespace)
        self._client = ClusterClient(self.endpoint)

    def _call(self, op: str, args: dict | None = None):
        return self._client.master(op, args)

    def ping(self) -> bool:
        return bool(self._call("ping").get("pong"))

    # -- datasets ---------------------------------------------------------------------
    def create_dataset(self, name: str, mounts: dict[str, str] | list[str],
                       options: dict | list[str] | None = None, replicas: int = 1,
                       sync: str | float | None = None,
                       selector: dict | list[str] | None = None, read_only: bool = True,
                       routing: str = "partitioned") -> dict:
        """`mounts`: {"/": "s3://bucket/prefix"} or ["/=s3://bucket/prefix"];
        `options`: the under store's fsspec options ({"endpoint_url": ...} or KEY=VALUE);
        `sync`: metadata sync policy ('always', 'never', '60s'); `selector`: node labels
        ({"zone": "a"}) or `resource:NAME` keys that limit which workers cache it;
        `routing`: 'partitioned' (blocks spread over all eligible workers) or
        'local-first' (the reader's own node caches what it reads)."""
        if isinstance(selector, list):
            selector = dict(s.split("=", 1) if "=" in s else (s, "") for s in selector)
        if isinstance(mounts, dict):
            pairs = [[p, u] for p, u in mounts.items()]
        else:
            pairs = [list(parse_mount(m)) for m in mounts]
            pairs = [["/" + p, u] for p, u in pairs]
        if isinstance(options, list):
            options = dict(_parse_option(o) for o in options)
        return self._call("dataset_create", {
            "name": name, "mounts": pairs, "options": options or {}, "replicas": replicas,
            "sync": sync, "selector": selector or {}, "read_only": read_only,
            "routing": routing})

    def load_metadata(self, url: str) -> dict:
        """Re-list everything under `fluid://dataset/path` from the under store now."""
        ds, _, path = FluidFileSystem._strip_protocol(url).partition("/")
        return self._call("metadata_load", {"ds": ds, "p": path})

    def datasets(self) -> list[dict]:
        return self._call("datasets")

    def dataset(self, name: str) -> dict:
        return self._call("dataset_show", {"name": name})

    def remove_dataset(self, name: str) -> dict:
        return self._call("dataset_rm", {"name": name})

    # -- namespaces -------------------------------------------------------------------
    def create_namespace(self, name: str) -> str:
        """A new namespace; returns its token (needs the default namespace's token)."""
        return self._call("namespace_create", {"name": name})["token"]

    def namespaces(self) -> list[str]:
        return self._call("namespaces")

    # -- cluster ----------------------------------------------------------------------
    def status(self) -> dict:
        return self._call("status")

    def filesystem(self, **kwargs) -> FluidFileSystem:
        e = self.endpoint
        return FluidFileSystem(address=e.master, token=e.token, namespace=e.namespace, **kwargs)


def connect(address: str | None = None, token: str | None = None,
            namespace: str | None = None) -> Client:
    """A client of the cluster at `address` (host:port), else FLUIDCACHE_MASTER, else the
    cluster `fluidcache start` runs, else the master of the Ray job this runs in."""
    return Client(address, token, namespace)
