"""The Python API: `fluidcache.connect() -> Client`, with the CLI's verbs.

Owns: turning verbs into master calls and argument checks users get back at once.
Never: talk to Ray (clients are not Ray drivers) or to under stores.
"""
from __future__ import annotations

import json
import time

from .client.discovery import find
from .client.fs import FluidFileSystem
from .client.reader import ClusterClient
from .config import parse_duration
from .errors import InvalidRequest
from .dataset import parse_mount


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

    def close(self) -> None:
        """Close this client's sockets and threads."""
        self._client.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
        return self._call("metadata_load", self._target(url))

    def datasets(self) -> list[dict]:
        """The namespace's datasets (public records: mounts without credentials)."""
        return self._client.paged("datasets")

    def dataset(self, name: str) -> dict:
        """A dataset's public record with its pins (paths) and TTLs ({path: deadline})."""
        d = self._call("dataset_show", {"name": name})
        rows = self._client.paged("rules", {"ds": name}) if \
            d.get("pin_count") or d.get("ttl_count") else []
        return dict(d, pins=[r[2] for r in rows if r[0] == "pin"],
                    ttls={r[2]: r[3] for r in rows if r[0] == "ttl"})

    def remove_dataset(self, name: str) -> dict:
        return self._call("dataset_rm", {"name": name})

    # -- data operations ---------------------------------------------------------------
    def load(self, url: str, metadata_only: bool = False, replicas: int | None = None,
             wait: bool = True, progress=None) -> "dict | LoadJob":
        """Warm up a file, directory or dataset (`fluid://dataset/path`) on the workers,
        each block onto its owners. Blocks cached already are skipped. With `wait`
        (default) returns the final status, calling `progress(status)` as it goes (Ctrl-C
        cancels the load); else returns a LoadJob to poll, wait for or cancel."""
        if metadata_only:
            return self._call("load", {**self._target(url), "metadata_only": True})
        job = LoadJob(self, self._call("load", {**self._target(url), "replicas": replicas}))
        return job.wait(progress) if wait else job

    def free(self, url: str, force: bool = False) -> dict:
        """Drop the cached blocks under a path on every worker (pinned ones stay unless
        `force`); returns freed blocks and bytes."""
        return self._call("free", {**self._target(url), "force": force})

    def pin(self, url: str) -> dict:
        """Keep the path's blocks from eviction, on every worker, across restarts."""
        return self._call("pin", self._target(url))

    def unpin(self, url: str) -> dict:
        return self._call("unpin", self._target(url))

    def ttl(self, url: str, duration: str | float | None) -> dict:
        """Drop the path's cached blocks `duration` from now ('10m', 3600; None or
        'never' removes the TTL)."""
        seconds = None if duration is None else parse_duration(duration)
        return self._call("ttl", {**self._target(url), "seconds": seconds})

    def rules(self) -> dict:
        """The namespace's pins and TTLs: {"pins": [[ns, ds, path]], "ttls": [...]}."""
        rows, ns = self._client.paged("rules"), self.endpoint.namespace
        return {"pins": [[ns, r[1], r[2]] for r in rows if r[0] == "pin"],
                "ttls": [[ns, r[1], r[2], r[3]] for r in rows if r[0] == "ttl"]}

    def du(self, url: str, per_file: bool = False, tiers: bool = False) -> dict:
        """{"path", "files", "total_bytes", "cached_bytes"} (+ "cached_by_file",
        "cached_by_tier"); a block counts once however many copies it has."""
        out = self._call("du", {**self._target(url), "tiers": tiers})
        if per_file:          # in pages: a large directory never makes one large reply
            by_file: dict[str, int] = {}
            after = None
            while True:
                page = self._call("du", {**self._target(url), "per_file": True,
                                         "after": after})
                by_file.update(page["cached_by_file"])
                after = page["next"]
                if after is None:
                    break
            out["cached_by_file"] = by_file
        return out

    @staticmethod
    def _target(url: str) -> dict:
        ds, _, path = FluidFileSystem._strip_protocol(url).partition("/")
        if not ds:
            raise InvalidRequest(f"{url!r}: name a dataset, as fluid://DATASET[/PATH]")
        return {"ds": ds, "p": path}

    # -- namespaces -------------------------------------------------------------------
    def create_namespace(self, name: str, allow: list[str] | None = None,
                         endpoints: list[str] | None = None,
                         node_credentials: bool = False) -> str:
        """A new namespace; returns its token (needs the default namespace's token).

        Parameters
        ----------
        allow
            URL prefixes the namespace may mount (`s3://bucket/prefix`); it may mount
            nothing else.
        endpoints
            Store endpoints its mounts may name (`http://minio.internal:9000`).
        node_credentials
            Whether its mounts may use the nodes' own credentials; otherwise each mount
            brings its own (or reads anonymously).

        Raises
        ------
        PermissionError
            Not the default namespace's token.
        FileExistsError
            The namespace exists.
        """
        return self._call("namespace_create", {
            "name": name, "allow": list(allow or []), "endpoints": list(endpoints or []),
            "node_credentials": node_credentials})["token"]

    def grant(self, name: str, allow: list[str] | None = None,
              endpoints: list[str] | None = None, node_credentials: bool = False) -> dict:
        """Let namespace `name` mount more (prefixes, endpoints, node credentials); grants
        only add. Returns its whole grant."""
        return self._call("namespace_grant", {
            "name": name, "allow": list(allow or []), "endpoints": list(endpoints or []),
            "node_credentials": node_credentials})["grant"]

    def namespace(self, name: str | None = None) -> dict:
        """A namespace's grant ({"namespace", "admin", "grant"}); a tenant sees only
        its own."""
        return self._call("namespace_show", {"name": name} if name else {})

    def namespaces(self) -> list[str]:
        return self._client.paged("namespaces")

    # -- cluster ----------------------------------------------------------------------
    def status(self) -> dict:
        """The master, every worker (tiers, counters) and the namespace's datasets
        (cached bytes, hits, misses); fetched in pages."""
        st = self._call("status")
        for part in ("workers", "datasets"):
            after = st.pop(f"{part}_next", None)
            while after is not None:
                page = self._call("status", {"part": part, "after": after})
                st[part] += page["items"]
                after = page["next"]
        return st

    def filesystem(self, **kwargs) -> FluidFileSystem:
        e = self.endpoint
        return FluidFileSystem(address=e.master, token=e.token, namespace=e.namespace, **kwargs)


class LoadJob:
    """A running load: `status()` (files, bytes and blocks done, state), `wait()`,
    `cancel()`. States: running, done, failed (some blocks could not be cached; see
    `errors`), cancelled."""

    def __init__(self, client: Client, status: dict) -> None:
        self.client, self.id, self.last = client, status["job"], status

    def status(self) -> dict:
        self.last = self.client._call("load_status", {"job": self.id, "poll": True})
        return self.last

    def cancel(self) -> dict:
        self.last = self.client._call("load_cancel", {"job": self.id})
        return self.last

    def wait(self, progress=None, interval: float = 0.25) -> dict:
        """Poll until the load ends; Ctrl-C cancels it (and re-raises)."""
        try:
            st = self.last
            while st["state"] == "running":
                if progress is not None:
                    progress(st)
                time.sleep(interval)          # polling the master for progress
                st = self.status()
            if progress is not None:
                progress(st)
            return st
        except KeyboardInterrupt:
            self.cancel()
            raise


def connect(address: str | None = None, token: str | None = None,
            namespace: str | None = None) -> Client:
    """A client of the cluster at `address` (host:port), else FLUIDCACHE_MASTER, else the
    cluster `fluidcache start` runs, else the master of the Ray job this runs in. Close it
    (`close()`, or `with connect() as c:`) when done; a dropped client closes its sockets
    when it is collected.

    Raises
    ------
    ConnectionError
        No cluster can be found (ClusterNotRunning).
    """
    return Client(address, token, namespace)


_SHARED: dict = {}


def shared_client() -> Client:
    """One client per process for the helpers that are called often (scheduling): made
    on first use, made again after a fork or when the discovery answer changes."""
    from .client.conn import FORKS
    endpoint = find()
    key = (FORKS[0], endpoint)
    client = _SHARED.get("client")
    if _SHARED.get("key") != key or client is None:
        if client is not None and _SHARED.get("key", (None,))[0] == FORKS[0]:
            client.close()
        client = _SHARED["client"] = Client(endpoint.master, endpoint.token, endpoint.namespace)
        _SHARED["key"] = key
    return client
