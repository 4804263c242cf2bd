"""What a namespace may mount: the admin's grants, and options checked as data.

The `default` namespace (the cluster's administrator) mounts anything; its options must
only be plain data (string keys, JSON-like values), so every record can be journaled and
replayed. Every other namespace is a tenant, and whatever it sends is data to check
against an allow-list, never something handed to a library as it is:

  - a mount URL must lie under a prefix the admin granted (`s3://bucket/prefix`), in a
    plain form (no user info, query, fragment, `.`/`..` or empty segments, escapes);
  - its options may hold only the keys listed for its protocol, with values of the
    listed types (so no `protocol`, `fo`, `target_protocol`, `client_kwargs` or
    anything else that changes what fsspec opens); an endpoint only where the admin
    granted that endpoint;
  - it brings its own credentials (or reads anonymously), unless the grant lets it use
    the nodes' own (`node_credentials`).
Everything here is checked before anything is opened or dialled.
Pure: no I/O.
"""
from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field

from ..errors import AccessDenied, InvalidRequest, Unavailable

_ALIASES = {"s3a": "s3", "gcs": "gs", "az": "abfs", "http": "https"}
_STR_LIMIT = 4096
_SEGMENT_BAD = re.compile(r"[\x00-\x1f\\%?#]")


@dataclass(frozen=True)
class Grant:
    """What the admin let a tenant namespace mount."""

    prefixes: tuple[str, ...] = ()         # normalized URLs: s3://bucket/prefix
    endpoints: tuple[str, ...] = ()        # normalized: https://host:port
    node_credentials: bool = False         # may its mounts use the nodes' own credentials?

    def merged(self, other: "Grant") -> "Grant":
        return Grant(tuple(sorted(set(self.prefixes) | set(other.prefixes))),
                     tuple(sorted(set(self.endpoints) | set(other.endpoints))),
                     self.node_credentials or other.node_credentials)

    def to_record(self) -> dict:
        return {"prefixes": list(self.prefixes), "endpoints": list(self.endpoints),
                "node_credentials": self.node_credentials}

    @classmethod
    def from_record(cls, r: dict) -> "Grant":
        return cls(tuple(r.get("prefixes") or ()), tuple(r.get("endpoints") or ()),
                   bool(r.get("node_credentials")))


# -- URLs -------------------------------------------------------------------------------------

def scheme_of(url: str) -> str:
    return _ALIASES.get(url.partition("://")[0].lower(), url.partition("://")[0].lower()) \
        if "://" in url else "file"


def normalize_url(url: str) -> str:
    """`s3://bucket/a/b` in a plain form; AccessDenied for anything that is not."""
    if not isinstance(url, str) or len(url) > _STR_LIMIT or "://" not in url or "::" in url:
        raise AccessDenied(f"bad URL {str(url)[:80]!r}: use scheme://bucket/prefix")
    scheme, _, rest = url.partition("://")
    scheme = _ALIASES.get(scheme.lower(), scheme.lower())
    authority, _, path = rest.partition("/")
    if not authority or "@" in authority or _SEGMENT_BAD.search(authority):
        raise AccessDenied(f"bad URL {url[:80]!r}: no user info, query or escapes")
    parts = [p for p in path.split("/")]
    if parts and parts[-1] == "":
        parts.pop()                                    # one trailing slash is fine
    for p in parts:
        if p in ("", ".", "..") or _SEGMENT_BAD.search(p):
            raise AccessDenied(f"bad URL {url[:80]!r}: no empty, '.' or '..' segments, "
                               "query or escapes")
    return f"{scheme}://{authority.lower() if scheme == 'https' else authority}" + \
        "".join("/" + p for p in parts)


def normalize_endpoint(url: str) -> str:
    """`https://host:port` (no path, user info or query); AccessDenied otherwise."""
    if not isinstance(url, str) or "://" not in url:
        raise AccessDenied(f"bad endpoint {str(url)[:80]!r}: use http(s)://host[:port]")
    scheme, _, rest = url.partition("://")
    host = rest.rstrip("/")
    if scheme.lower() not in ("http", "https") or not host or "/" in host or "@" in host \
            or _SEGMENT_BAD.search(host):
        raise AccessDenied(f"bad endpoint {url[:80]!r}: use http(s)://host[:port]")
    return f"{scheme.lower()}://{host.lower()}"


def covers(prefix: str, url: str) -> bool:
    return url == prefix or url.startswith(prefix.rstrip("/") + "/")


# -- options ----------------------------------------------------------------------------------

_S3 = {"key": str, "secret": str, "token": str, "anon": bool, "endpoint_url": "endpoint",
       "requester_pays": bool, "version_aware": bool, "region_name": str}
# Protocols a tenant may mount, each with the options it may pass. S3 and HTTPS only:
# the other fsspec stores take options (a service account's token URI, an account name
# that becomes a host, credentials from the nodes' environment) that reach the network
# or the nodes' identity in ways not vetted here; the admin mounts them.
_ALLOWED: dict[str, dict] = {
    "s3": _S3,
    "https": {"headers": "headers"},
}
_HEADERS = {"authorization"}             # all a tenant's HTTP mount may send
# botocore settings of every tenant S3 mount: a store that accepts connections and never
# answers holds a master or worker thread for seconds, not minutes
_S3_CLIENT = {"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 2}}


def _own_credentials(scheme: str, o: dict) -> bool:
    if scheme == "s3":
        return bool(o.get("anon")) or bool(o.get("key") and o.get("secret"))
    return True              # https: there are no node credentials to borrow


def _check_value(name: str, kind, value, grant: Grant):
    if kind is bool:
        if not isinstance(value, bool):
            raise InvalidRequest(f"option {name} must be true or false")
        return value
    if kind is str:
        if not isinstance(value, str) or len(value) > _STR_LIMIT or "\0" in value:
            raise InvalidRequest(f"option {name} must be a string of at most {_STR_LIMIT}")
        return value
    if kind == "endpoint":
        endpoint = normalize_endpoint(value)
        if endpoint not in grant.endpoints:
            raise AccessDenied(f"endpoint {endpoint} is not granted to this namespace "
                               "(the admin grants it: fluidcache namespace grant NAME "
                               "--allow-endpoint URL)")
        return endpoint
    if kind == "headers":
        if isinstance(value, dict) and len({k.lower() for k in value if isinstance(k, str)}) \
                == len(value) and all(
                isinstance(k, str) and k.lower() in _HEADERS and isinstance(v, str) and
                len(v) <= _STR_LIMIT and all(32 <= ord(c) < 127 for c in v)
                for k, v in value.items()):
            return dict(value)
        raise AccessDenied("option headers may only carry Authorization (a string)")
    raise AssertionError(kind)


def check_tenant(url: str, options: dict, grant: Grant | None,
                 protocols: tuple[str, ...]) -> tuple[str, dict]:
    """A tenant's mount, checked: (its URL, the options to open it with). Raises
    AccessDenied or InvalidRequest naming what is refused."""
    if grant is None or not grant.prefixes:
        raise AccessDenied("this namespace may mount nothing yet: the admin grants URL "
                           "prefixes (fluidcache namespace grant NAME --allow s3://bucket/p)")
    scheme = scheme_of(url)
    allowed = _ALLOWED.get(scheme)
    if allowed is None or scheme not in {_ALIASES.get(p, p) for p in protocols}:
        raise AccessDenied(f"a tenant namespace may not mount {scheme}:// URLs")
    if not isinstance(options, dict):
        raise InvalidRequest("options must be a map")
    for name in options:
        if name not in allowed:
            raise AccessDenied(f"option {str(name)[:40]!r} is not allowed for a tenant's "
                               f"{scheme}:// mount (allowed: {', '.join(sorted(allowed))})")
    norm = normalize_url(url)
    if not any(covers(p, norm) for p in grant.prefixes):
        raise AccessDenied(f"{norm} is not under a prefix granted to this namespace")
    out = {name: _check_value(name, allowed[name], value, grant)
           for name, value in options.items()}
    if not _own_credentials(scheme, out) and not grant.node_credentials:
        raise AccessDenied("a tenant's mount needs its own credentials (or anonymous "
                           "access); the nodes' own are used only where the admin grants "
                           "it (--node-credentials)")
    if scheme == "s3":
        if "region_name" in out:
            out["client_kwargs"] = {"region_name": out.pop("region_name")}
        out["config_kwargs"] = dict(_S3_CLIENT)
        out["store_retries"] = 1         # s3fs's own retries of timeouts, beyond botocore's
    if scheme == "https":
        out["allow_redirects"] = False        # a redirect must not lead the nodes elsewhere
    return norm, out


def check_plain(value, what: str = "options", depth: int = 0):
    """Raise InvalidRequest unless `value` is plain data: maps with string keys, lists,
    strings, numbers, booleans and None, at most 8 deep and 64 KiB as JSON (what the
    journal can hold and replay)."""
    if depth > 8:
        raise InvalidRequest(f"{what} nest too deeply")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidRequest(f"{what} may only have string keys, not {k!r:.40}")
            check_plain(v, what, depth + 1)
    elif isinstance(value, list):
        for v in value:
            check_plain(v, what, depth + 1)
    elif not (value is None or isinstance(value, (str, int, float, bool))):
        raise InvalidRequest(f"{what} may hold only plain data, not {type(value).__name__}")
    if depth == 0 and len(json.dumps(value)) > 64 * 1024:
        raise InvalidRequest(f"{what} are over 64 KiB")
    return value


@dataclass(frozen=True)
class Grants:
    """A namespace's grant from the CLI or API arguments, normalized."""

    allow: list = field(default_factory=list)
    endpoints: list = field(default_factory=list)
    node_credentials: bool = False

    def grant(self) -> Grant:
        if not isinstance(self.allow, list) or not isinstance(self.endpoints, list) or \
                not isinstance(self.node_credentials, bool) or \
                len(self.allow) > 256 or len(self.endpoints) > 64:
            raise InvalidRequest("a grant is a list of URL prefixes, a list of endpoints "
                                 "and a boolean")
        return Grant(tuple(sorted({normalize_url(u) for u in self.allow})),
                     tuple(sorted({normalize_endpoint(e) for e in self.endpoints})),
                     self.node_credentials)


class Gate:
    """How many master requests each tenant namespace runs at once: at most `each` per
    namespace and `tenants` for all of them together, so the admin always has threads
    left and one tenant cannot starve the others. The admin passes freely."""

    def __init__(self, each: int, tenants: int) -> None:
        self.each, self.tenants = each, tenants
        self._running: dict[str, int] = {}
        self._total = 0
        self._lock = threading.Lock()

    def enter(self, ns: str) -> None:
        if ns == "default":
            return
        with self._lock:
            mine = self._running.get(ns, 0)
            if mine >= self.each or self._total >= self.tenants:
                raise Unavailable(f"namespace {ns} has {mine} requests running (at most "
                                  f"{self.each}); try again when one has ended")
            self._running[ns] = mine + 1
            self._total += 1

    def leave(self, ns: str) -> None:
        if ns == "default":
            return
        with self._lock:
            n = self._running.get(ns, 0) - 1
            if n > 0:
                self._running[ns] = n
            else:
                self._running.pop(ns, None)
            self._total -= 1
