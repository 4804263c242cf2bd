"""Datasets and their union namespace: pure path logic, no I/O.

A dataset is a name in a namespace with one or more mounts (mount point -> under-store
URL + options). Paths inside a dataset are normalized here and nowhere else:
`..` segments and NUL bytes are refused (AccessDenied), `.` and empty segments dropped,
so no path can leave its mount. A path resolves to the mount with the longest matching
mount point; directories that hold mount points list them as child directories.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from .errors import AccessDenied, InvalidRequest, NotFound

# \Z, not $: '$' also matches before a trailing newline, so "abc\n" passed
_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62})\Z")


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidRequest(
            f"bad {kind} name {name!r}: use 1-63 lowercase letters, digits, '.', '_' or '-'")
    return name


def normalize(path: str) -> str:
    """'/a//b/./c/' -> 'a/b/c'; '' is the dataset root. Raises AccessDenied on '..'."""
    if not isinstance(path, str):
        raise InvalidRequest("path must be a string")
    if "\0" in path:
        raise AccessDenied("path contains a NUL byte")
    parts = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        decoded = unquote(part)          # an HTTP store would decode %2e%2e to '..'
        if part == ".." or decoded in (".", "..") or "/" in decoded or "\\" in decoded:
            raise AccessDenied(f"path {path!r} leaves its dataset ('..' is not allowed)")
        parts.append(part)
    return "/".join(parts)


def parse_mount(spec: str) -> tuple[str, str]:
    """'/extra=file:///data' -> ('extra', 'file:///data'); '/=s3://b/p' -> ('', 's3://b/p')."""
    point, sep, url = spec.partition("=")
    if not sep or not url or not point.startswith("/"):
        raise InvalidRequest(f"bad mount {spec!r}: use /POINT=URL, e.g. /=s3://bucket/prefix")
    return normalize(point), url


@dataclass(frozen=True, slots=True)
class MountSpec:
    point: str              # normalized, '' for the root
    url: str
    options: dict = field(default_factory=dict)


def parse_sync(value) -> float | None:
    """A dataset's metadata sync policy as seconds: 'always' -> 0 (re-list on every
    lookup), 'never' -> -1 (list once), '90', '90s', '5m', '1h' -> seconds; None -> the
    cluster's default."""
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        if value is not None and (not math.isfinite(value) or value < 0 and value != -1):
            raise InvalidRequest("sync interval must be a finite number of seconds")
        return None if value is None else float(value)
    text = str(value).strip().lower()
    if text == "always":
        return 0.0
    if text == "never":
        return -1.0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|m|h)?", text)
    if not m:
        raise InvalidRequest(f"bad sync policy {value!r}: use always, never or an interval "
                             "such as 60s, 5m, 1h")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


# partitioned: each block has its rendezvous owners anywhere in the cluster, so capacity
# adds up across nodes; local-first: the reader's own node caches what it reads
ROUTINGS = ("partitioned", "local-first")
# how a write reaches the under store (issue 19): read-only refuses every write; through
# writes each file to the store only; cache-through to the store and its owners' tiers;
# async-through keeps it on the writing worker's disk and uploads it in the background;
# must-cache keeps it there only (never uploaded; gone after `write_ttl`, if set)
WRITE_MODES = ("read-only", "through", "cache-through", "async-through", "must-cache")
JOURNALED = ("async-through", "must-cache")      # kept in a worker's journal at close


@dataclass(slots=True)
class Dataset:
    name: str
    namespace: str
    mounts: tuple[MountSpec, ...]
    replicas: int = 1
    sync_interval: float | None = None      # None: cluster default; 0 always; -1 never
    selector: dict = field(default_factory=dict)
    write_mode: str = "read-only"
    routing: str = "partitioned"            # or "local-first"
    uid: str = ""                           # this incarnation of the name (set at create)
    write_ttl: float | None = None          # must-cache: seconds a file is kept

    def __post_init__(self) -> None:
        check_name("dataset", self.name)
        check_name("namespace", self.namespace)
        if not self.mounts:
            raise InvalidRequest(f"dataset {self.name} needs at least one mount")
        points = [m.point for m in self.mounts]
        for i, a in enumerate(points):
            for b in points[i + 1:]:
                if a == b or _nested(a, b):
                    raise InvalidRequest(f"mount points /{a} and /{b} overlap")
        if not isinstance(self.replicas, int) or isinstance(self.replicas, bool) or \
                not 1 <= self.replicas <= 16:
            raise InvalidRequest("replicas must be between 1 and 16")
        if not isinstance(self.selector, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.selector.items()):
            raise InvalidRequest("a node selector maps strings to strings")
        self.sync_interval = parse_sync(self.sync_interval)
        if self.write_mode not in WRITE_MODES:
            raise InvalidRequest(f"write mode must be one of {', '.join(WRITE_MODES)}, "
                                 f"not {str(self.write_mode)[:40]!r}")
        if self.write_ttl is not None:
            ttl = self.write_ttl
            if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or \
                    not 0 < ttl < math.inf:
                raise InvalidRequest("write_ttl must be a positive number of seconds")
            if self.write_mode != "must-cache":
                raise InvalidRequest("write_ttl is for must-cache datasets (kept only in "
                                     "the cache); other modes keep files in the store")
            self.write_ttl = float(ttl)
        if self.routing not in ROUTINGS:
            raise InvalidRequest(f"routing must be {' or '.join(ROUTINGS)}, not {self.routing!r}")

    @property
    def read_only(self) -> bool:
        return self.write_mode == "read-only"

    def check_writable(self) -> None:
        """Raise AccessDenied unless the dataset takes writes."""
        if self.read_only:
            raise AccessDenied(f"dataset {self.name} is read-only (create it with "
                               "--write-mode through or cache-through to write)")

    def resolve(self, path: str) -> tuple[MountSpec, str]:
        """(mount, path relative to its root) for a normalized path."""
        best = None
        for m in self.mounts:
            if m.point == "" or path == m.point or path.startswith(m.point + "/"):
                if best is None or len(m.point) > len(best.point):
                    best = m
        if best is None:
            raise NotFound(f"{self.name}/{path}: not under any mount of the dataset")
        rel = path[len(best.point):].lstrip("/") if best.point else path
        return best, rel

    def child_mounts(self, path: str) -> list[str]:
        """Names of the directories that mount points add directly under `path`."""
        out = set()
        for m in self.mounts:
            if not m.point:
                continue
            if path == "" or m.point.startswith(path + "/"):
                rest = m.point[len(path):].lstrip("/")
                out.add(rest.split("/", 1)[0])
        return sorted(out)

    def is_virtual_dir(self, path: str) -> bool:
        """A directory that exists only because mount points lie below it."""
        return path == "" or any(m.point.startswith(path + "/") for m in self.mounts if m.point)

    def public(self) -> dict:
        """What clients may see: mount points and redacted URLs, never options."""
        from .understore import redact
        sync = self.sync_interval
        return {"name": self.name, "namespace": self.namespace, "replicas": self.replicas,
                "mounts": {"/" + m.point: redact(m.url) for m in self.mounts},
                "selector": dict(self.selector), "read_only": self.read_only,
                "write_mode": self.write_mode, "routing": self.routing,
                "write_ttl": self.write_ttl,
                "sync": "default" if sync is None else "always" if sync == 0 else
                        "never" if sync < 0 else f"{sync:g}s", "sync_seconds": sync}

    def to_record(self) -> dict:
        return {"name": self.name, "namespace": self.namespace, "replicas": self.replicas,
                "sync_interval": self.sync_interval, "selector": dict(self.selector),
                "write_mode": self.write_mode, "routing": self.routing, "uid": self.uid,
                "write_ttl": self.write_ttl,
                "mounts": [[m.point, m.url, m.options] for m in self.mounts]}

    @classmethod
    def from_record(cls, r: dict) -> "Dataset":
        return cls(r["name"], r["namespace"],
                   tuple(MountSpec(p, u, dict(o)) for p, u, o in r["mounts"]),
                   r.get("replicas", 1), r.get("sync_interval"), dict(r.get("selector") or {}),
                   r.get("write_mode", "read-only"), r.get("routing", "partitioned"),
                   r.get("uid", ""), r.get("write_ttl"))


def _nested(a: str, b: str) -> bool:
    """Two distinct non-root mount points overlap when one lies inside the other."""
    if not a or not b:
        return False
    return a.startswith(b + "/") or b.startswith(a + "/")
