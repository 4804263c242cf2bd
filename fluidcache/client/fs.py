"""`fluid://dataset/path`: the fsspec filesystem users and libraries see.

A thin shell: metadata comes from the master (one call per directory, cached for the
sync interval), bytes from ClusterClient (reader.py). The object pickles by its
constructor arguments (fsspec's `__reduce__`) and opens its sockets lazily in each
process, so it works in DataLoader workers and Ray tasks and after a fork.
The filesystem is read-only: writes raise PermissionError.
"""
from __future__ import annotations

import datetime
import threading
from concurrent.futures import ThreadPoolExecutor

from fsspec.spec import AbstractFileSystem

from .. import names
from ..errors import (AccessDenied, IsADirectory, NotFound, NotSupported, StaleVersion,
                      Unavailable)
from .conn import FORKS
from .discovery import find
from .file import FluidFile
from .metadata import MetadataCache
from .reader import ClusterClient

_LISTING_TTL = 60.0


class FluidFileSystem(AbstractFileSystem):
    protocol = names.PROTOCOL
    root_marker = ""

    def __init__(self, address: str | None = None, token: str | None = None,
                 namespace: str | None = None, short_circuit: bool = True,
                 connect_timeout: float = 5.0, request_timeout: float = 60.0,
                 listing_ttl: float = _LISTING_TTL, failover_timeout: float = 60.0,
                 readahead: int = 2, under_store_options: dict | None = None,
                 metadata_check: float = 1.0, **kwargs) -> None:
        """`failover_timeout`: how long a read waits for the cluster when no worker
        answers (a worker restarting) before it raises; `request_timeout`: one request;
        `readahead`: blocks a sequential reader of an open file fetches ahead (0: off);
        `under_store_options`: storage options per protocol (`{"s3": {...}}`) of the
        user's own: only then, when no worker answers at all, read the under store
        directly (counted as `direct`) instead of waiting for the cluster;
        `metadata_check`: at most how long (seconds) cached listings are trusted without
        a word from the master on whether their dataset changed (0: ask every time)."""
        super().__init__(**kwargs)
        self._opts = dict(address=address, token=token, namespace=namespace,
                          short_circuit=short_circuit, connect_timeout=connect_timeout,
                          request_timeout=request_timeout, failover_timeout=failover_timeout)
        self.listing_ttl = listing_ttl
        self.readahead = max(0, int(readahead))
        self.under_store_options = under_store_options
        self._mounts: dict[tuple[str, str], object] = {}
        self._client: ClusterClient | None = None
        self._gen = -1
        self.meta = MetadataCache(metadata_check)
        self._lock = threading.Lock()

    # -- per-process state --------------------------------------------------------------
    @property
    def client(self) -> ClusterClient:
        if self._gen != FORKS[0] or self._client is None:
            o = self._opts
            endpoint = find(o["address"], o["token"], o["namespace"])
            self._client = ClusterClient(endpoint, o["connect_timeout"], o["request_timeout"],
                                         o["short_circuit"],
                                         failover_timeout=o["failover_timeout"])
            if self.under_store_options is not None:
                self._client.direct = self._direct
            self._mounts = {}
            self._gen = FORKS[0]
        return self._client

    @classmethod
    def _strip_protocol(cls, path) -> str:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("fluid://"):
            path = path[len("fluid://"):]
        elif path.startswith("fluid::"):
            path = path[len("fluid::"):]
        return path.strip("/")

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        ds, _, rest = path.partition("/")
        return ds, rest

    # -- metadata -----------------------------------------------------------------------
    def ls(self, path, detail=True, refresh=False, **kwargs):
        path = self._strip_protocol(path)
        entries = self._listing(path, refresh)   # a file lists as itself, as elsewhere in fsspec
        return entries if detail else [e["name"] for e in entries]

    def _fresh(self, dataset: str) -> None:
        """Before cached metadata of `dataset` is trusted: if no reply has said its epoch
        for `metadata_check` seconds, ask (a moved epoch drops its listings)."""
        if dataset and self.meta.due(dataset):
            self.meta.saw(dataset, self.client.master("epoch", {"ds": dataset})["epoch"])

    def _listing(self, path: str, refresh: bool = False) -> list[dict]:
        ds, rest = self._split(path)
        if not refresh:
            self._fresh(ds)
            hit = self.meta.listing(path)
            if hit is not None:
                return hit
        epoch = None
        if not ds:
            entries = [{"name": d["name"], "size": 0, "type": "directory"}
                       for d in self.client.paged("datasets")]
        else:
            for _ in range(3):   # pages of up to 2,000 entries; one directory, few calls
                entries, after, epoch = [], None, None
                while True:
                    page = self.client.master("ls", {"ds": ds, "p": rest, "after": after,
                                                     "refresh": refresh and after is None})
                    self.meta.saw(ds, page["epoch"])
                    if epoch not in (None, page["epoch"]):
                        break       # listed again between pages: start over, never mix
                    epoch = page["epoch"]
                    entries += page["entries"]
                    after = page["next"]
                    if after is None:
                        break
                if after is None:
                    break
        self.meta.put(path, entries, self._ttl(ds), epoch)
        return entries

    def _ttl(self, dataset: str) -> float:
        """How long a listing stays fresh here: the dataset's sync policy, else ours."""
        if not dataset:
            return self.listing_ttl
        sync = self.client.dataset(dataset).get("sync_seconds")
        if sync is None:
            return self.listing_ttl
        return float("inf") if sync < 0 else min(sync, self.listing_ttl)

    def info(self, path, refresh=False, **kwargs):
        """A file's or directory's info: name, size, type and, for files, `version`,
        `fid`, `mtime` (seconds), `created` where the store knows it, and `ETag` where
        the version is an entity tag (as s3fs gives it).

        Raises
        ------
        FileNotFoundError
            No such dataset, file or directory.
        PermissionError
            A wrong token, or a path that leaves its dataset.
        """
        return self._info(self._strip_protocol(path), refresh)

    def _info(self, path: str, refresh: bool = False) -> dict:
        ds, rest = self._split(path)
        if not rest:
            if not ds:
                return {"name": "", "size": 0, "type": "directory"}
            if not refresh and ds not in {e["name"] for e in self._listing("")}:
                raise NotFound(f"fluid://{ds}: no such dataset")
            return {"name": ds, "size": 0, "type": "directory"}
        parent = path.rsplit("/", 1)[0]
        if not refresh:
            self._fresh(ds)
            e, listed = self.meta.entry(parent, path)
            if not listed and self.meta.missed(parent) > 2:
                # a job reading several files of one directory: list it once (one call
                # per directory) instead of one call per file
                self._listing(parent)
                e, listed = self.meta.entry(parent, path)
            if e is not None:
                return e            # a listed file's info costs no RPC
        reply = self.client.master("info", {"ds": ds, "p": rest, "refresh": bool(refresh)})
        self.meta.saw(ds, reply["epoch"])
        return reply["entry"]

    def invalidate_cache(self, path=None):
        self.meta.invalidate(None if path is None else self._strip_protocol(path))

    # -- metadata beyond info (what duckdb, polars, pyarrow datasets and zarr ask) --------
    def modified(self, path):
        """When the file was last modified in the under store (a UTC datetime).

        Raises
        ------
        FileNotFoundError
            No such file.
        OSError
            The under store gives no modification time for this file (ENOTSUP).
        """
        return _when(self._file_entry(self._strip_protocol(path)), "mtime", path)

    def created(self, path):
        """When the file was created, where the under store knows it (GCS, Azure,
        local files; S3 does not say): a UTC datetime, else OSError (ENOTSUP)."""
        return _when(self._file_entry(self._strip_protocol(path)), "created", path)

    def ukey(self, path):
        """A key that changes whenever the file's content may have: its file id (a hash
        of namespace, under-store URL and version)."""
        return self._file_entry(self._strip_protocol(path))["fid"]

    def checksum(self, path):
        """An int that is the same only for the same version of the file."""
        return int(self.ukey(path)[:16], 16)

    # -- bytes ----------------------------------------------------------------------------
    def _file_entry(self, path: str, refresh: bool = False) -> dict:
        entry = self._info(path, refresh)      # `path` is stripped already
        if entry["type"] != "file":
            raise IsADirectory(f"fluid://{path} is a directory")
        return entry

    def _read(self, path: str, start: int | None, end: int | None) -> bytes:
        for attempt in range(2):
            entry = self._file_entry(path, refresh=attempt > 0)
            size = entry["size"]
            s = 0 if start is None else (max(0, size + start) if start < 0 else start)
            e = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
            if s >= e:
                return b""
            try:
                return self.client.read(entry, s, e)
            except StaleVersion:
                self.invalidate_cache(path)
                self.client.cluster(refresh=True)      # the block size may have moved too
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def cat_file(self, path, start=None, end=None, **kwargs):
        return self._read(self._strip_protocol(path), start, end)

    def cat_ranges(self, paths, starts, ends, max_gap=None, on_error="return", **kwargs):
        if not (len(paths) == len(starts) == len(ends)):
            raise ValueError("paths, starts and ends must have the same length")

        def one(args):
            p, s, e = args
            try:
                return self._read(self._strip_protocol(p), s, e)
            except Exception as exc:  # fsspec's on_error contract
                if on_error == "raise":
                    raise
                return exc

        if len(paths) <= 1:
            return [one(a) for a in zip(paths, starts, ends)]
        with ThreadPoolExecutor(min(16, len(paths))) as ex:
            return list(ex.map(one, zip(paths, starts, ends)))

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None,
              **kwargs):
        if mode != "rb":
            raise AccessDenied(f"fluid:// is read-only (mode {mode!r})")
        path = self._strip_protocol(path)
        return FluidFile(self, path, self._file_entry(path))

    def _direct(self, req: dict) -> bytes:
        """One block piece read from the under store with the user's own options: the
        dataset's mount (its public, redacted URL) and a version-checked range read."""
        from ..understore import Mount
        mounts = self.client.dataset(req["ds"]).get("mounts", {})
        path = "/" + req["p"]
        point = max((p for p in mounts if p == "/" or path == p or
                     path.startswith(p.rstrip("/") + "/")), key=len, default=None)
        if point is None:
            raise NotFound(f"fluid://{req['ds']}/{req['p']}: not under any mount")
        url = mounts[point]
        proto = url.split("://", 1)[0] if "://" in url else "file"
        opts = self.under_store_options.get(proto)
        if opts is None:
            raise Unavailable(f"no worker answered, and no under-store options for {proto}")
        mount = self._mounts.get((point, url))
        if mount is None:
            mount = self._mounts[(point, url)] = Mount(url, opts)
        rel = path[len(point):].strip("/")
        bs = req["bs"]
        start = req["b"] * bs + req["o"]
        length = min(bs, req["s"] - req["b"] * bs) - req["o"] if req["l"] < 0 else req["l"]
        return mount.read_range(rel, req["v"], start, start + length, size=req["s"]).data

    # -- read-only ------------------------------------------------------------------------
    def _readonly(self, *args, **kwargs):
        raise AccessDenied("fluid:// is read-only: write to the under store instead")

    mkdir = makedirs = rm_file = _rm = rm = pipe_file = put_file = touch = mv = cp_file = \
        rmdir = _readonly


def _when(entry: dict, key: str, path: str) -> datetime.datetime:
    t = entry.get(key)
    if t is None:
        what = "modification" if key == "mtime" else "creation"
        raise NotSupported(f"{path}: the under store gives no {what} time for this file")
    return datetime.datetime.fromtimestamp(t, tz=datetime.timezone.utc)
