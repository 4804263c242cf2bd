"""`fluid://dataset/path`: the fsspec filesystem users and libraries see.

A thin shell: metadata comes from the master (one call per directory, cached for the
sync interval), bytes from ClusterClient (reader.py). The object pickles by its
constructor arguments (fsspec's `__reduce__`) and opens its sockets lazily in each
process, so it works in DataLoader workers and Ray tasks and after a fork.
The filesystem is read-only: writes raise PermissionError.
"""
from __future__ import annotations

import io
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from fsspec.spec import AbstractFileSystem

from .. import blocks, names
from ..errors import AccessDenied, IsADirectory, NotFound, StaleVersion, Unavailable
from .conn import FORKS
from .discovery import find
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
                 **kwargs) -> None:
        """`failover_timeout`: how long a read waits for the cluster when no worker
        answers (a worker restarting) before it raises; `request_timeout`: one request;
        `readahead`: blocks a sequential reader of an open file fetches ahead (0: off);
        `under_store_options`: storage options per protocol (`{"s3": {...}}`) of the
        user's own: only then, when no worker answers at all, read the under store
        directly (counted as `direct`) instead of waiting for the cluster."""
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
        self._meta: dict[str, tuple[float, list[dict], dict[str, dict]]] = {}
        self._misses: dict[str, int] = {}       # per directory: infos not in a listing
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

    def _listing(self, path: str, refresh: bool = False) -> list[dict]:
        now = time.monotonic()
        hit = None if refresh else self._meta.get(path)
        if hit is not None and hit[0] > now:
            return hit[1]
        ds, rest = self._split(path)
        if not ds:
            entries = [{"name": d["name"], "size": 0, "type": "directory"}
                       for d in self.client.master("datasets")]
        else:
            entries, after = [], None
            while True:          # pages of up to 2,000 entries; one directory, few calls
                page = self.client.master("ls", {"ds": ds, "p": rest, "after": after,
                                                 "refresh": refresh and after is None})
                entries += page["entries"]
                after = page["next"]
                if after is None:
                    break
        with self._lock:
            self._meta[path] = (now + self._ttl(ds), entries, {e["name"]: e for e in entries})
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
        hit = None if refresh else self._meta.get(parent)
        if hit is not None and hit[0] <= time.monotonic():
            hit = None                   # expired: list it again (below), not per file
        if hit is None and not refresh and self._misses.get(parent, 0) >= 2:
            # a job reading several files of one directory: list it once (one call per
            # directory) instead of one call per file
            self._listing(parent)
            self._misses.pop(parent, None)
            hit = self._meta.get(parent)
        if hit is not None:
            e = hit[2].get(path)        # a listed file's info costs no RPC
            if e is not None:
                return e
        self._misses[parent] = self._misses.get(parent, 0) + 1
        return self.client.master("info", {"ds": ds, "p": rest, "refresh": bool(refresh)})

    def invalidate_cache(self, path=None):
        with self._lock:
            if path is None:
                self._meta.clear()
            else:
                path = self._strip_protocol(path)
                self._meta.pop(path, None)
                self._meta.pop(path.rsplit("/", 1)[0], None)

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
            except Exception as exc:  # noqa: BLE001 - fsspec's on_error contract
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
        return mount.read_range(rel, req["v"], start, start + length)

    # -- read-only ------------------------------------------------------------------------
    def _readonly(self, *args, **kwargs):
        raise AccessDenied("fluid:// is read-only: write to the under store instead")

    mkdir = makedirs = rm_file = _rm = rm = pipe_file = put_file = touch = mv = cp_file = \
        rmdir = _readonly


class FluidFile(io.RawIOBase):
    """A seekable, read-only file over the blocks of one listed file.

    Keeps the last block it read, so small sequential reads (CSV parsers, tar readers)
    cost one block fetch per block, not one per call.
    """

    def __init__(self, fs: FluidFileSystem, path: str, entry: dict) -> None:
        super().__init__()
        self.fs, self.path, self.details = fs, path, entry
        self.size = entry["size"]
        self.loc = 0
        self._block: tuple[int, memoryview | bytes] | None = None
        self._ahead: dict[int, Future] = {}          # block index -> background fetch
        self._next_block, self._hinted = 0, 0        # for large sequential reads

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.loc

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.loc, io.SEEK_END: self.size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence {whence}")
        if base + offset < 0:
            raise ValueError("negative seek position")
        self.loc = base + offset
        return self.loc

    def read(self, size: int = -1) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        end = self.size if size is None or size < 0 else min(self.size, self.loc + size)
        if self.loc >= end:
            return b""
        bs = self.fs.client.cluster()["block_size"]
        first, last = self.loc // bs, (end - 1) // bs
        if first == last and (end - self.loc) < bs:
            data = self._cached_block(first)
            off = self.loc - first * bs
            out = bytes(data[off:off + end - self.loc])
        else:   # always the version this file was opened at: never a mix of two versions
            out = self.fs.client.read(self.details, self.loc, end)
            self._hint_ahead(first, last)
        self.loc += len(out)
        return out

    def _hint_ahead(self, first: int, last: int) -> None:
        """A large sequential reader: have the owners of the next reads' blocks fetch
        them now, so they are cached when the reader gets there."""
        if not self.fs.readahead or self._next_block != first:
            self._next_block, self._hinted = last + 1, last + 1     # a seek: start over
            return
        client = self.fs.client
        n = blocks.block_count(self.size, client.cluster()["block_size"])
        span = last - first + 1
        for j in range(max(last + 1, self._hinted), min(n, last + 1 + span + self.fs.readahead)):
            client.prefetch(self.details, j)
            self._hinted = j + 1
        self._next_block = last + 1

    read1 = read

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:
        """Read into the caller's buffer; large reads go straight from the local tier
        files into it (the fastest way to read a big file through fluid://)."""
        if self.closed:
            raise ValueError("I/O operation on closed file")
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self.size - self.loc))
        if want < self.fs.client.cluster()["block_size"]:
            data = self.read(want)
            view[:len(data)] = data
            return len(data)
        bs = self.fs.client.cluster()["block_size"]
        n = self.fs.client.read_into(self.details, self.loc, view[:want])
        self._hint_ahead(self.loc // bs, (self.loc + max(n, 1) - 1) // bs)
        self.loc += n
        return n

    def _cached_block(self, index: int):
        """A whole block of the version this file was opened at. If that version is gone
        from the under store (StaleVersion), the read fails: reopen the file.
        A reader moving from block i-1 to i is sequential: blocks i+1.. are fetched in the
        background (readahead), so a cold stream overlaps the under store's latency."""
        if self._block is None or self._block[0] != index:
            fut = self._ahead.pop(index, None)
            data = None
            if fut is not None:
                try:
                    data = fut.result()
                except Exception:  # noqa: BLE001 - fetch it again below, errors and all
                    data = None
            if data is None:
                data = self.fs.client.block(self.details, index)
            sequential = self._block is not None and self._block[0] == index - 1
            self._block = (index, data)
            if sequential and self.fs.readahead:
                self._read_ahead(index)
        return self._block[1]

    def _read_ahead(self, index: int) -> None:
        client = self.fs.client
        last = blocks.block_count(self.size, client.cluster()["block_size"]) - 1
        for j in [j for j in self._ahead if j <= index]:
            self._ahead.pop(j).cancel()
        for j in range(index + 1, min(last, index + self.fs.readahead) + 1):
            if j not in self._ahead:
                self._ahead[j] = client.executor().submit(client.block, self.details, j)
                client.counters["readahead"] += 1

    def close(self) -> None:
        self._block = None
        for fut in self._ahead.values():
            fut.cancel()
        self._ahead.clear()
        super().close()
