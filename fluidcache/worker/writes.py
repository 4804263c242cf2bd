"""The write path of a worker: files streamed from clients into the under store.

Owns: write sessions and the data server's write ops

    write_open {ds, p, x}       a session for one file (x: create it only if absent)
    write {w, o} + bytes        the next bytes; `o` must be where the last ended
    write_close {w}             commit: the file is in the under store, the master told
    write_cache {w, b: [i]}     cache-through: cache blocks i (the caller's owners) here
    write_abort {w}             discard the upload
    put {ds, p, x} + bytes      a whole small file in one request (open, write, close)

Each session is bound to the namespace that opened it and to a dataset that takes
writes (dataset.check_writable), with its path normalized and resolved through our
own mount table. A file is visible whole or not at all: an object store shows an object
once its upload completes; local files are written under a temporary name and renamed
on commit (fsspec's autocommit=False). An abort, a failure, or a session silent for
`write_idle` seconds discards the upload. For cache-through the bytes also go to a spool
(an unlinked temporary file: nothing is left behind by a crash) from which blocks are
cached once the committed file's version names their keys.
Never: trust a client's offsets or another namespace's session id, hold more than
`write_chunk` bytes of one request, or block the server's loop on the store or a disk.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .. import blocks, placement
from ..dataset import Dataset, normalize
from ..errors import AlreadyExists, InvalidRequest, NotFound, Unavailable
from ..tiering import layout
from ..understore import Mount
from ..understore.mount import translate

log = logging.getLogger(__name__)
OPS = ("write_open", "write", "write_close", "write_cache", "write_abort", "put")

# (ns, dataset name, path) -> the entry the master lists for the written file
TellMaster = Callable[[str, str, str], Awaitable[dict]]


@dataclass(eq=False)
class Session:
    id: str
    ns: str
    ds: Dataset
    path: str                   # normalized, in the dataset
    mount: Mount
    rel: str                    # in the mount
    exclusive: bool
    file: object = None         # the under store's file, open for writing
    spool: object = None        # cache-through: the bytes written, to cache from
    written: int = 0
    last: float = field(default_factory=time.monotonic)
    busy: asyncio.Lock = field(default_factory=asyncio.Lock)
    entry: dict | None = None   # once committed

    @property
    def dsid(self) -> str:
        return f"{self.ns}/{self.ds.name}"


class Writes:
    def __init__(self, config, store, access, mount_of, tell_master: TellMaster,
                 labels: dict, resources: list) -> None:
        """`store`: the BlockStore; `access`: tokens and records (access.py); `mount_of(ns,
        ds, spec)`: our mount table (reads.py); `tell_master`: the master lists a file
        written (awaited on the loop); `labels`/`resources`: this node's, matched against
        a dataset's selector before a block is cached."""
        self.config, self.store, self._access = config, store, access
        self._mount_of, self._tell = mount_of, tell_master
        self._labels, self._resources = labels, resources
        self.sessions: dict[str, Session] = {}
        self.counters = dict(files_written=0, bytes_written=0, writes_aborted=0,
                             write_blocks_cached=0)
        self._pool = ThreadPoolExecutor(config.write_threads, thread_name_prefix="fc-write")
        self._reaper: asyncio.Task | None = None

    # -- the data server's handler --------------------------------------------------------
    async def handle(self, req, payload):
        await self._access.authorize(req.namespace, req.token)
        ns, a = req.namespace, req.args
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())
        if req.op == "write_open":
            s = await self._open(ns, a)
            return {"w": s.id, "chunk": self.config.write_chunk}, None
        if req.op == "put":
            s = await self._open(ns, a)
            try:
                await self._write(s, 0, payload)
                return await self._close(s), None
            except BaseException:
                await self._abort(s)
                raise
        s = self._session(ns, a)
        if req.op == "write":
            offset = a.get("o")
            if not isinstance(offset, int) or isinstance(offset, bool):
                raise InvalidRequest("write needs an integer offset 'o'")
            try:
                await self._write(s, offset, payload)
            except BaseException:
                await self._abort(s)
                raise
            return {"n": s.written}, None
        if req.op == "write_close":
            try:
                return await self._close(s), None
            except BaseException:
                await self._abort(s)
                raise
        if req.op == "write_cache":
            return await self._cache(s, a.get("b")), None
        await self._abort(s)                                 # write_abort
        return {"aborted": True}, None

    def _session(self, ns: str, args: dict) -> Session:
        sid = args.get("w")
        s = self.sessions.get(sid) if isinstance(sid, str) else None
        if s is None or s.ns != ns:        # another namespace's id is no id at all
            raise NotFound("no such write (aborted, idle too long, or never opened)")
        s.last = time.monotonic()
        return s

    # -- steps ----------------------------------------------------------------------------
    async def _open(self, ns: str, args: dict) -> Session:
        name, p = args.get("ds"), args.get("p")
        if not isinstance(name, str) or not isinstance(p, str):
            raise InvalidRequest("a write needs a dataset 'ds' and a path 'p'")
        rec = await self._access.dataset(ns, name, False)
        ds = rec.dataset
        ds.check_writable()
        path = normalize(p)
        spec, rel = ds.resolve(path)
        if not rel:
            raise InvalidRequest(f"{name}/{path}: a mount point is a directory, not a file")
        self._check_room(ns)
        s = Session(secrets.token_hex(16), ns, ds, path, self._mount_of(ns, ds, spec), rel,
                    bool(args.get("x")))
        self.sessions[s.id] = s
        try:
            await self._run(self._open_under, s)
        except BaseException:
            self.sessions.pop(s.id, None)
            raise
        return s

    def _check_room(self, ns: str) -> None:
        cap = self.config.write_sessions
        mine = sum(1 for s in self.sessions.values() if s.ns == ns)
        if len(self.sessions) >= cap or (ns != "default" and mine >= max(1, cap // 2)):
            raise Unavailable(f"this worker has {len(self.sessions)} files open for "
                              "writing (its limit); close some, or try again")

    def _open_under(self, s: Session) -> None:
        m = s.mount
        path = m.under_path(s.rel)          # opens the filesystem
        with translate(s.path):
            if s.exclusive and m.fs.exists(path):
                raise AlreadyExists(f"{s.ds.name}/{s.path} exists")
            if m.protocol == "file":
                m.fs.makedirs(m.fs._parent(path), exist_ok=True)
            # local files: a temporary name, renamed on commit (never half-visible); S3:
            # an exclusive write also asks the store (If-None-Match) where it listens
            mode = "xb" if s.exclusive and m.protocol in ("s3", "s3a") else "wb"
            kw = {"block_size": self.config.write_part} if self.config.write_part else {}
            s.file = m.fs.open(path, mode, autocommit=m.protocol != "file", **kw)
        if s.ds.write_mode == "cache-through":
            s.spool = tempfile.TemporaryFile(dir=self.config.write_spool or None)

    async def _write(self, s: Session, offset: int, data: bytes) -> None:
        async with s.busy:
            if s.file is None:
                raise InvalidRequest("this write is closed")
            if offset != s.written:
                raise InvalidRequest(f"write at {offset}; the file has {s.written} bytes "
                                     "(chunks must come in order)")
            if data:
                await self._run(self._write_under, s, data)
            s.written += len(data)
            s.last = time.monotonic()

    def _write_under(self, s: Session, data: bytes) -> None:
        with translate(s.path):
            s.file.write(data)
        if s.spool is not None:
            s.spool.write(data)

    async def _close(self, s: Session) -> dict:
        async with s.busy:
            if s.file is None:
                raise InvalidRequest("this write is closed")
            await self._run(self._commit, s)
            s.file = None
        entry = await self._tell(s.ns, s.ds.name, s.path)
        self.counters["files_written"] += 1
        self.counters["bytes_written"] += s.written
        if s.spool is None or not entry.get("size"):
            self._drop(s)
            return {"entry": entry}
        s.entry = entry                      # write_cache comes next
        return {"entry": entry, "w": s.id}

    def _commit(self, s: Session) -> None:
        m = s.mount
        with translate(s.path):
            if s.exclusive and m.fs.exists(m.under_path(s.rel)):
                raise AlreadyExists(f"{s.ds.name}/{s.path} exists")  # made meanwhile
            if m.protocol == "file":
                s.file.commit()           # the rename
                s.file.close()
            else:
                s.file.close()            # the upload completes: the object appears whole

    async def _cache(self, s: Session, indexes) -> dict:
        """Cache blocks `indexes` of the committed file from the spool (the caller named
        the ones this worker owns). The session ends here."""
        if s.entry is None or s.spool is None:
            raise InvalidRequest("write_cache follows write_close of a cache-through write")
        count = blocks.block_count(s.entry["size"], self.config.block_size)
        if not isinstance(indexes, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < count
                for i in indexes):
            raise InvalidRequest(f"write_cache needs block indexes below {count}")
        try:
            async with s.busy:
                cached = await self._run(self._cache_blocks, s, sorted(set(indexes)))
        finally:
            self._drop(s)
        self.counters["write_blocks_cached"] += cached
        return {"cached": cached}

    def _cache_blocks(self, s: Session, indexes: list[int]) -> int:
        if not placement.matches(s.ds.selector, self._labels, self._resources):
            return 0
        bs, entry = self.config.block_size, s.entry
        # the key from our own mount table and the version the master listed
        fid = blocks.file_id(s.mount.url_of(s.rel), entry["version"], s.ns)
        cached = 0
        for i in indexes:
            s.spool.seek(i * bs)
            data = s.spool.read(blocks.block_length(entry["size"], bs, i))
            if self.store.put(blocks.block_key(fid, i, bs), data,
                              layout.Meta(s.dsid, fid, i)):
                cached += 1
        return cached

    async def _abort(self, s: Session) -> None:
        if self.sessions.get(s.id) is not s:
            return
        self._drop(s)
        if s.file is not None:
            self.counters["writes_aborted"] += 1
            file, s.file = s.file, None
            try:
                await self._run(_discard, file)
            except Exception as exc:  # noqa: BLE001 - the store keeps no half file either way
                log.warning("discarding a write to %s/%s: %s", s.ds.name, s.path, exc)

    def _drop(self, s: Session) -> None:
        self.sessions.pop(s.id, None)
        if s.spool is not None:
            s.spool.close()
            s.spool = None

    async def _reap(self) -> None:
        """Abort sessions left silent `write_idle` seconds (a client that went away)."""
        while True:
            await asyncio.sleep(min(10.0, self.config.write_idle / 2))
            limit = time.monotonic() - self.config.write_idle
            for s in [s for s in self.sessions.values()
                      if s.last < limit and not s.busy.locked()]:
                await self._abort(s)

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _discard(file) -> None:
    """Give up an upload: an object store's multipart upload is aborted, a local
    temporary file removed; the file object is closed without committing."""
    if getattr(file, "autocommit", True) is False:
        file.close()                  # a local temporary file: closed, then removed
        file.discard()
        return
    discard = getattr(file, "discard", None)
    if discard is None:
        file.close()
        return
    discard()
    try:
        file.closed = True            # fsspec's buffered files: never flushed after this
    except AttributeError:
        pass
