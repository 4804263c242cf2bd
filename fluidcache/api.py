"""The Python API: `fluidcache.connect() -> Client`, with the CLI's verbs.

Owns: turning verbs into master calls and argument checks users get back at once.
Never: talk to Ray (clients are not Ray drivers) or to under stores.
Errors are fluidcache.errors exceptions, each also a built-in OSError subclass (and
InvalidRequest a ValueError): every verb may raise PermissionError (AccessDenied: a wrong
token) and ConnectionError (Unavailable: the master did not answer within
`ClientSettings.master_retry` seconds, or is too busy).
"""
from __future__ import annotations

import json

from .client.discovery import find
from .client.fs import FluidFileSystem
from .client.cluster import Cluster
from .errors import InvalidRequest
from .config import parse_duration
from .dataset import parse_mount
from .dataverbs import DataVerbs
from .loadjob import LoadJob


def _parse_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InvalidRequest(f"bad option {text!r}: use KEY=VALUE")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


class Client(DataVerbs):
    """The verbs of one namespace (`fluidcache.connect()`): datasets and namespaces here,
    data operations (load, free, pin, ttl, du, ...) in dataverbs.py."""

    def __init__(self, address: str | None = None, token: str | None = None,
                 namespace: str | None = None) -> None:
        self.endpoint = find(address, token, namespace)
        self._cluster = Cluster(self.endpoint)

    def _call(self, op: str, args: dict | None = None):
        return self._cluster.master(op, args)

    def _paged(self, op: str, args: dict | None = None) -> list:
        return self._cluster.paged(op, args)

    def close(self) -> None:
        """Close this client's sockets.

        Parameters
        ----------
        None

        Raises
        ------
        Nothing.
        """
        self._cluster.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ping(self) -> bool:
        """Whether the master answers.

        Parameters
        ----------
        None

        Raises
        ------
        PermissionError, ConnectionError
            A wrong token (AccessDenied); no answer from the master (Unavailable).
        """
        return bool(self._call("ping").get("pong"))

    # -- datasets ---------------------------------------------------------------------
    def create_dataset(self, name: str, mounts: dict[str, str] | list[str],
                       options: dict | list[str] | None = None, replicas: int = 1,
                       sync: str | float | None = None,
                       selector: dict | list[str] | None = None, routing: str = "partitioned",
                       write_mode: str = "read-only",
                       write_ttl: str | float | None = None) -> dict:
        """`mounts`: {"/": "s3://bucket/prefix"} or ["/=s3://bucket/prefix"];
        returns the dataset's public record.

        Parameters
        ----------
        name
            1-63 lowercase letters, digits, '.', '_' or '-'.
        mounts
            {"/": "s3://bucket/prefix"} or ["/=s3://bucket/prefix"]; points may not nest.
        options
            The under store's fsspec options ({"endpoint_url": ...} or KEY=VALUE, the
            value parsed as JSON where it parses).
        replicas
            Owners of each block, 1-16.
        sync
            Metadata sync policy ('always', 'never', '60s'; None: the cluster's).
        selector
            Node labels ({"zone": "a"}) or `resource:NAME` keys that limit which
            workers cache it.
        routing
            'partitioned' (blocks spread over all eligible workers) or 'local-first'
            (the reader's own node caches what it reads).
        write_mode
            'read-only' (every write raises PermissionError), 'through' (each file goes
            to the under store when it is closed; nothing cached), 'cache-through'
            (to the under store, and its blocks cached on their owners), 'async-through'
            (kept on the writing worker's disk at close, uploaded in the background;
            `sync` waits for it) or 'must-cache' (kept there only, never uploaded).
        write_ttl
            must-cache: how long a file is kept ('1h', seconds); None: until removed.

        Raises
        ------
        ValueError
            A bad name, mount, option, replica count, sync policy or routing, or a
            namespace at its dataset cap (InvalidRequest).
        FileExistsError
            The dataset exists (AlreadyExists).
        PermissionError
            A wrong token, or a tenant mount not granted (AccessDenied).
        ConnectionError
            The master did not answer within `master_retry` seconds (Unavailable).
        """
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
            "sync": sync, "selector": selector or {}, "write_mode": write_mode,
            "routing": routing,
            "write_ttl": None if write_ttl is None else parse_duration(write_ttl)})

    def datasets(self) -> list[dict]:
        """The namespace's datasets (public records: mounts without credentials).

        Parameters
        ----------
        None

        Raises
        ------
        PermissionError, ConnectionError
            A wrong token (AccessDenied); no answer from the master (Unavailable).
        """
        return self._paged("datasets")

    def dataset(self, name: str) -> dict:
        """A dataset's public record with its pins (paths) and TTLs ({path: deadline}).

        Parameters
        ----------
        name
            The dataset's name.

        Raises
        ------
        FileNotFoundError
            No such dataset in the namespace (NotFound).
        PermissionError, ConnectionError
            A wrong token (AccessDenied); no answer from the master (Unavailable).
        """
        d = self._call("dataset_show", {"name": name})
        rows = self._paged("rules", {"ds": name}) if \
            d.get("pin_count") or d.get("ttl_count") else []
        return dict(d, pins=[r[2] for r in rows if r[0] == "pin"],
                    ttls={r[2]: r[3] for r in rows if r[0] == "ttl"})

    def remove_dataset(self, name: str) -> dict:
        """Remove a dataset (its cached blocks are dropped as workers next report).

        Parameters
        ----------
        name
            The dataset's name.

        Raises
        ------
        FileNotFoundError
            No such dataset in the namespace (NotFound).
        PermissionError, ConnectionError
            A wrong token (AccessDenied); no answer from the master (Unavailable).
        """
        return self._call("dataset_rm", {"name": name})

    # -- namespaces -------------------------------------------------------------------
    def create_namespace(self, name: str, allow: list[str] | None = None,
                         endpoints: list[str] | None = None,
                         node_credentials: bool = False) -> str:
        """A new namespace; returns its token (needs the default namespace's token).

        Parameters
        ----------
        name
            1-63 lowercase letters, digits, '.', '_' or '-'.
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
            Not the default namespace's token, or a bad prefix or endpoint
            (AccessDenied).
        FileExistsError
            The namespace exists (AlreadyExists).
        ValueError
            A bad name or grant (InvalidRequest).
        ConnectionError
            The master did not answer within `master_retry` seconds (Unavailable).
        """
        return self._call("namespace_create", {
            "name": name, "allow": list(allow or []), "endpoints": list(endpoints or []),
            "node_credentials": node_credentials})["token"]

    def grant(self, name: str, allow: list[str] | None = None,
              endpoints: list[str] | None = None, node_credentials: bool = False) -> dict:
        """Let namespace `name` mount more (prefixes, endpoints, node credentials); grants
        only add. Returns its whole grant.

        Parameters
        ----------
        name
            A tenant namespace.
        allow, endpoints, node_credentials
            As `create_namespace` takes them.

        Raises
        ------
        PermissionError
            Not the default namespace's token, or a bad prefix or endpoint
            (AccessDenied).
        FileNotFoundError
            No such tenant namespace (NotFound).
        ValueError
            A bad grant (InvalidRequest).
        ConnectionError
            The master did not answer within `master_retry` seconds (Unavailable).
        """
        return self._call("namespace_grant", {
            "name": name, "allow": list(allow or []), "endpoints": list(endpoints or []),
            "node_credentials": node_credentials})["grant"]

    def namespace(self, name: str | None = None) -> dict:
        """A namespace's grant ({"namespace", "admin", "grant"}); a tenant sees only
        its own.

        Parameters
        ----------
        name
            The namespace (None: this client's).

        Raises
        ------
        PermissionError
            Another namespace than one's own, unless the default namespace's token
            (AccessDenied).
        FileNotFoundError
            No such namespace (NotFound).
        ConnectionError
            The master did not answer within `master_retry` seconds (Unavailable).
        """
        return self._call("namespace_show", {"name": name} if name else {})

    def namespaces(self) -> list[str]:
        """The names of the namespaces this token may see.

        Parameters
        ----------
        None

        Raises
        ------
        PermissionError, ConnectionError
            A wrong token (AccessDenied); no answer from the master (Unavailable).
        """
        return self._paged("namespaces")

    # -- cluster ----------------------------------------------------------------------
    def status(self) -> dict:
        """The master, every worker (tiers, counters) and the namespace's datasets
        (cached bytes, hits, misses); fetched in pages.

        Parameters
        ----------
        None

        Raises
        ------
        PermissionError, ConnectionError
            A wrong token (AccessDenied); no answer from the master (Unavailable).
        """
        st = self._call("status")
        for part in ("workers", "datasets"):
            after = st.pop(f"{part}_next", None)
            while after is not None:
                page = self._call("status", {"part": part, "after": after})
                st[part] += page["items"]
                after = page["next"]
        return st

    def drain(self, node: str, wait: bool = False, timeout: float | None = None) -> dict:
        """Drain a worker: it leaves the routing at once, its cached blocks move to their
        new owners among the other workers, then it is retired (and no worker is made
        on its node again while the node lives). Returns {"node": its id, "state":
        "draining", "retired" or "lost", "pending_blocks": moves from it not done}.

        Parameters
        ----------
        node
            A worker id (its Ray node id) or host name, as `status` shows them.
        wait
            Return once it is retired (or lost).
        timeout
            Seconds `wait` waits at most (None: as long as it takes); the last state is
            returned when it runs out.

        Raises
        ------
        ValueError, PermissionError, ConnectionError
            No such worker (InvalidRequest); not the default namespace's token
            (AccessDenied); no answer from the master (Unavailable).
        """
        from .backoff import Backoff
        got = self._call("drain", {"node": node})
        backoff = Backoff(float("inf") if timeout is None else timeout, 0.2, 2.0)
        while wait and got["state"] == "draining" and backoff.wait():
            got = self._call("drain", {"node": got["node"]})
        return got

    def filesystem(self, **kwargs) -> FluidFileSystem:
        """A `fluid://` filesystem of this client's cluster, namespace and token.

        Parameters
        ----------
        kwargs
            FluidFileSystem's keyword arguments (short_circuit, timeouts, readahead,
            skip_instance_cache, ...).

        Raises
        ------
        ValueError
            A FLUIDCACHE_*_TIMEOUT variable that is not a number (InvalidRequest).
        """
        e = self.endpoint
        return FluidFileSystem(address=e.master, token=e.token, namespace=e.namespace, **kwargs)


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


__all__ = ["Client", "LoadJob", "connect", "shared_client"]
