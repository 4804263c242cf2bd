"""`fluid://dataset/path`: the fsspec filesystem users and libraries see.

A thin shell: metadata comes from the master (one call per directory, cached for the
sync interval: metadata.py), bytes from the process's BlockReader (reader.py). The
object pickles by its constructor arguments (fsspec's `__reduce__`) and opens its
sockets lazily in each process, so it works in DataLoader workers and Ray tasks and
after a fork. Writes (fswrite.py) go to datasets created with a write mode (through,
cache-through); on a read-only dataset (the default) every write raises PermissionError.
Every method raises OSError subclasses (fluidcache.errors): FileNotFoundError (NotFound),
PermissionError (AccessDenied: a wrong token, a path leaving its dataset, a write to a
read-only dataset), FileExistsError (AlreadyExists: mode "xb"),
ConnectionError (Unavailable: no master or worker answered in time) and OSError with
errno ESTALE (StaleVersion: the file changed in the under store while it was read).
"""
from __future__ import annotations

import datetime

from fsspec.spec import AbstractFileSystem

from .. import names
from ..config import ClientSettings
from ..errors import IsADirectory, NotSupported, StaleVersion
from .batch import read_many
from .cluster import Cluster
from .conn import FORKS
from .direct import DirectReader
from .discovery import find
from .file import FluidFile
from .fswrite import WriteVerbs
from .listings import Listings
from .metadata import MetadataCache
from .reader import BlockReader


class FluidFileSystem(WriteVerbs, AbstractFileSystem):
    protocol = names.PROTOCOL
    root_marker = ""

    def __init__(self, address: str | None = None, token: str | None = None,
                 namespace: str | None = None, short_circuit: bool = True,
                 connect_timeout: float | None = None, request_timeout: float | None = None,
                 listing_ttl: float | None = None, failover_timeout: float | None = None,
                 readahead: int = 2, under_store_options: dict | None = None,
                 metadata_check: float = 1.0, serve_timeout: float | None = None,
                 **kwargs) -> None:
        """A client of the cluster at `address`. Timeouts not given come from
        `ClientSettings.from_env()` (FLUIDCACHE_CONNECT_TIMEOUT, ..._REQUEST_TIMEOUT,
        ..._FAILOVER_TIMEOUT, ..._SERVE_TIMEOUT, else its defaults). Nothing is contacted
        until first use.

        Parameters
        ----------
        address, token, namespace
            The master (host:port), the namespace's token and name; each not given is
            found as `fluidcache.connect` finds it (FLUIDCACHE_MASTER, FLUIDCACHE_TOKEN,
            FLUIDCACHE_NAMESPACE, the file `fluidcache start` writes, the Ray job).
        short_circuit
            Read blocks that a worker on this machine holds from its tier files.
        connect_timeout, request_timeout
            Seconds to connect to a master or worker; to wait for one reply.
        listing_ttl
            Seconds a listing stays fresh here, at most (a dataset's sync policy may say
            less).
        failover_timeout
            How long a read waits for the cluster when no worker answers (a worker
            restarting) before it raises.
        readahead
            Blocks a sequential reader of an open file has fetched ahead (0: off).
        under_store_options
            Storage options per protocol (`{"s3": {...}}`) of the user's own: only then,
            when no worker answers at all, read the under store directly (counted as
            `direct`) instead of waiting for the cluster.
        metadata_check
            At most how long (seconds) cached listings are trusted without a word from
            the master on whether their dataset changed (0: ask every time).
        serve_timeout
            Seconds a worker's serving processes may stay silent on a read before the
            worker itself is asked (default 5).

        Raises
        ------
        fluidcache.errors.InvalidRequest
            A FLUIDCACHE_*_TIMEOUT variable that is not a number (ValueError).
        """
        super().__init__(**kwargs)
        self.settings = ClientSettings.from_env(
            connect_timeout=connect_timeout, request_timeout=request_timeout,
            failover_timeout=failover_timeout, listing_ttl=listing_ttl,
            serve_timeout=serve_timeout)
        self._opts = dict(address=address, token=token, namespace=namespace,
                          short_circuit=short_circuit)
        self.listing_ttl = self.settings.listing_ttl
        self.readahead = max(0, int(readahead))
        self.under_store_options = under_store_options
        self._client: BlockReader | None = None
        self._gen = -1
        self.meta = MetadataCache(metadata_check)
        self.listings = Listings(self.meta, self._cluster, self.listing_ttl)

    # -- per-process state --------------------------------------------------------------
    @property
    def client(self) -> BlockReader:
        """This process's reader (made on first use, and again after a fork); its
        `cluster` makes the master calls, its `counters` say how reads were served.

        Raises
        ------
        fluidcache.errors.ClusterNotRunning
            No cluster can be found (a ConnectionError).
        """
        if self._gen != FORKS[0] or self._client is None:
            o = self._opts
            cluster = Cluster(find(o["address"], o["token"], o["namespace"]), self.settings)
            direct = None if self.under_store_options is None else \
                DirectReader(cluster, self.under_store_options)
            self._client = BlockReader(cluster, o["short_circuit"], direct)
            self._gen = FORKS[0]
        return self._client

    def _cluster(self) -> Cluster:
        return self.client.cluster

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

    # -- metadata -----------------------------------------------------------------------
    def ls(self, path, detail=True, refresh=False, **kwargs):
        """The entries of a directory (a file lists as itself, as elsewhere in fsspec);
        the datasets at the root. Served from the cached listing while it is fresh.

        Parameters
        ----------
        path
            `fluid://dataset/path`, `dataset/path` or "" (the datasets).
        detail
            Entries as dicts (as `info` gives them), else their names.
        refresh
            List it again from the master, which lists the under store again.

        Raises
        ------
        FileNotFoundError
            No such dataset, directory or file (NotFound).
        PermissionError
            A wrong token, or a path that leaves its dataset (AccessDenied).
        ConnectionError
            The master did not answer within `master_retry` seconds (Unavailable).
        """
        path = self._strip_protocol(path)
        entries = self.listings.listing(path, refresh)   # a file lists as itself
        return entries if detail else [e["name"] for e in entries]

    def info(self, path, refresh=False, **kwargs):
        """A file's or directory's info: name, size, type and, for files, `version`,
        `fid`, `mtime` (seconds), `created` where the store knows it, and `ETag` where
        the version is an entity tag (as s3fs gives it). A file of a listed directory
        costs no master call beyond the epoch check every `metadata_check` seconds.

        Parameters
        ----------
        path
            `fluid://dataset/path` or `dataset/path`.
        refresh
            Ask the master, which asks the under store again.

        Raises
        ------
        FileNotFoundError
            No such dataset, file or directory (NotFound).
        PermissionError
            A wrong token, or a path that leaves its dataset (AccessDenied).
        ConnectionError
            The master did not answer within `master_retry` seconds (Unavailable).
        """
        return self.listings.info(self._strip_protocol(path), refresh)

    def invalidate_cache(self, path=None):
        """Forget cached listings: of `path` and below, or all (None). Never raises.

        Parameters
        ----------
        path
            `fluid://dataset/path`, `dataset/path`, or None for every listing.

        Raises
        ------
        Nothing: it only drops what this filesystem holds.
        """
        self.meta.invalidate(None if path is None else self._strip_protocol(path))

    # -- metadata beyond info (what duckdb, polars, pyarrow datasets and zarr ask) --------
    def modified(self, path):
        """When the file was last modified in the under store (a UTC datetime).

        Parameters
        ----------
        path
            A file: `fluid://dataset/path` or `dataset/path`.

        Raises
        ------
        FileNotFoundError
            No such file (NotFound).
        IsADirectoryError
            A directory (IsADirectory).
        OSError
            The under store gives no modification time for this file (NotSupported,
            ENOTSUP); the errors of `info`.
        """
        return _when(self._file_entry(self._strip_protocol(path)), "mtime", path)

    def created(self, path):
        """When the file was created, where the under store knows it (GCS, Azure,
        local files; S3 does not say): a UTC datetime.

        Parameters
        ----------
        path
            A file: `fluid://dataset/path` or `dataset/path`.

        Raises
        ------
        FileNotFoundError
            No such file (NotFound).
        IsADirectoryError
            A directory (IsADirectory).
        OSError
            The under store gives no creation time for this file (NotSupported,
            ENOTSUP); the errors of `info`.
        """
        return _when(self._file_entry(self._strip_protocol(path)), "created", path)

    def ukey(self, path):
        """A key that changes whenever the file's content may have: its file id (a hash
        of namespace, under-store URL and version).

        Parameters
        ----------
        path
            A file: `fluid://dataset/path` or `dataset/path`.

        Raises
        ------
        FileNotFoundError
            No such file (NotFound).
        IsADirectoryError
            A directory (IsADirectory).
        OSError
            The errors of `info` (PermissionError, ConnectionError).
        """
        return self._file_entry(self._strip_protocol(path))["fid"]

    def checksum(self, path):
        """An int that is the same only for the same version of the file.

        Parameters
        ----------
        path
            A file: `fluid://dataset/path` or `dataset/path`.

        Raises
        ------
        OSError
            As `ukey`.
        """
        return int(self.ukey(path)[:16], 16)

    # -- bytes ----------------------------------------------------------------------------
    def _file_entry(self, path: str, refresh: bool = False) -> dict:
        entry = self.listings.info(path, refresh)      # `path` is stripped already
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
                self.client.cluster.map(refresh=True)      # the block size may have moved too
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def cat_file(self, path, start=None, end=None, **kwargs):
        """Bytes [start, end) of a file (negative offsets count from its end), all of
        one version: a file that changes while it is read is listed again and read
        again once.

        Parameters
        ----------
        path
            A file: `fluid://dataset/path` or `dataset/path`.
        start, end
            Offsets as Python slices take them; None: the start, the end.

        Raises
        ------
        FileNotFoundError
            No such file (NotFound).
        IsADirectoryError
            A directory (IsADirectory).
        PermissionError
            A wrong token, or a path that leaves its dataset (AccessDenied).
        ConnectionError
            No worker served a block within `failover_timeout` seconds, or the master
            did not answer within `master_retry` seconds (Unavailable).
        OSError
            ESTALE: the file changed in the under store again while it was read again
            (StaleVersion); other errors the under store gave (UnderStoreError).
        """
        return self._read(self._strip_protocol(path), start, end)

    def prefetch(self, path) -> bool:
        """Have a file's blocks fetched into the cache by their owners, and wait until
        they have landed (a bulk prefetch: the bytes stay on the workers, the next read
        of the file is a hit); True if every block did. A file in a full tier that takes
        nothing more (fill-once) is kept aside for its next read.

        Raises
        ------
        FileNotFoundError, IsADirectoryError, PermissionError
            As `cat_file`.
        """
        return self.client.land(self._file_entry(self._strip_protocol(path)))

    def hint_reuse(self, paths, soon: bool) -> int:
        """Say when files will be read again, the first path given soonest: `soon`,
        their cached blocks are kept as a hit keeps them (the first path's evicted last);
        else they are evicted before any other when a tier needs room (the first path's
        first): a sample read once this epoch. Nothing is fetched or removed now, and
        no hit is counted; returns how many blocks the workers hold. Only under `lru`
        and `lfu` eviction does the order change what is kept (fill-once never evicts
        to make room).

        A path not found is skipped (nothing of it is cached).

        Raises
        ------
        IsADirectoryError, PermissionError
            As `cat_file`, for any of `paths` (then no hint is sent).
        """
        entries = []
        for p in paths:
            try:
                entries.append(self._file_entry(self._strip_protocol(p)))
            except FileNotFoundError:
                continue
        return self.client.hint(entries, soon) if entries else 0

    def cat_ranges(self, paths, starts, ends, max_gap=None, on_error="return", **kwargs):
        """Bytes of many ranges, in the order given: ranges inside one block are read
        in batches, one request per worker (client/batch.py); the rest at once on the
        reader's threads. Each range is of one version of its file; one that changed in
        the under store is listed and read again once.

        Parameters
        ----------
        paths, starts, ends
            One range per position, as `cat_file` takes them.
        on_error
            "return": a range that fails gives its exception in its place; "raise":
            the first failure is raised.

        Raises
        ------
        ValueError
            `paths`, `starts` and `ends` differ in length.
        OSError
            With on_error="raise", what `cat_file` raises.
        """
        if not (len(paths) == len(starts) == len(ends)):
            raise ValueError("paths, starts and ends must have the same length")
        out: list = [None] * len(paths)
        jobs, where = [], []
        for i, (p, start, end) in enumerate(zip(paths, starts, ends, strict=True)):
            try:
                entry = self._file_entry(self._strip_protocol(p))
            except Exception as exc:  # noqa: BLE001 - fsspec's on_error contract: any error
                out[i] = exc
                continue
            size = entry["size"]
            s = 0 if start is None else (max(0, size + start) if start < 0 else start)
            e = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
            jobs.append((entry, s, max(s, e)))
            where.append(i)
        for i, got in zip(where, read_many(self.client, jobs) if jobs else (), strict=True):
            if isinstance(got, StaleVersion):       # changed: list it again, read it again
                try:
                    got = self._read(self._strip_protocol(paths[i]), starts[i], ends[i])
                except Exception as exc:  # noqa: BLE001 - given back in its place
                    got = exc
            out[i] = got
        if on_error == "raise":
            for got in out:
                if isinstance(got, Exception):
                    raise got
        return out

    def cat(self, path, recursive=False, on_error="raise", **kwargs):
        """Contents of one file, or {path: bytes} of many (a list, a glob, a directory
        with `recursive`), read in batches (`cat_ranges`). `on_error`: "raise" the first
        failure, "omit" failed paths, "return" their exceptions in their place."""
        paths = self.expand_path(path, recursive=recursive)
        if len(paths) == 1 and not isinstance(path, list) and \
                paths[0] == self._strip_protocol(path):
            return self.cat_file(paths[0])
        got = self.cat_ranges(paths, [None] * len(paths), [None] * len(paths))
        out = {}
        for p, data in zip(paths, got, strict=True):
            if isinstance(data, Exception):
                if on_error == "raise":
                    raise data
                if on_error == "omit":
                    continue
            out[p] = data
        return out

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None,
              **kwargs):
        if mode != "rb":
            return self._open_write(path, mode, autocommit)       # fswrite.py
        path = self._strip_protocol(path)
        return FluidFile(self, path, self._file_entry(path))


def _when(entry: dict, key: str, path: str) -> datetime.datetime:
    t = entry.get(key)
    if t is None:
        what = "modification" if key == "mtime" else "creation"
        raise NotSupported(f"{path}: the under store gives no {what} time for this file")
    return datetime.datetime.fromtimestamp(t, tz=datetime.timezone.utc)
