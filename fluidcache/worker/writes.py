"""The write path of a worker: files streamed from clients into the under store.

Owns: write sessions and the data server's write ops

    write_open {ds, p, x}       a session for one file (x: create it only if absent)
    write {w, o} + bytes        the next bytes; `o` must be where the last ended (the
                                same chunk sent again, a client's retry, is taken once)
    write_close {w}             commit: the file is in the under store, the master told
                                (asked again after it answered, the same answer)
    write_cache {w, b: [i]}     cache-through: cache blocks i (the caller's owners) here
    write_abort {w}             discard the upload
    put {ds, p, x} + bytes      a whole small file in one request (open, write, close)

Each session is bound to the namespace that opened it and to a dataset that takes
writes (dataset.check_writable), with its path normalized and resolved through our
own mount table; at close the dataset's record is at most RECHECK (1 s) old (removed,
made again or made read-only before that: nothing is committed; the master checks
again when it lists the file). A file is visible whole or not at
all (upload.py): S3 shows an object once its upload completes; a local file is renamed
over its name. Once a commit has begun it is never aborted (a request timeout does not
cancel it), and a master that does not answer then is told again in the background.
An abort, a failure, or a session silent for `write_idle` seconds discards the upload.
async-through and must-cache files go to this worker's journal instead (journal.py),
and are listed and uploaded (or kept) by pending.py once committed there.
For cache-through the bytes also go to a spool (an unlinked temporary file), cached
only when the version the master lists is the one this commit made (the store's own
answer: ETag, or size and mtime): a writer that came between caches nothing.
Limits: `write_sessions` open files per worker, half of them per namespace; half the
`write_threads` per namespace (a tenant whose store hangs holds only its own);
`write_chunk` bytes per request. A chunk is written (on a write thread, within the
namespace's half) while the next one arrives: a write's reply says its chunk was
taken, the next write or the close says it was written, and a chunk that failed fails
them (the file is then aborted). Memory per open file: two chunks (the one written,
the one arrived), below one S3 part (16 MiB) buffered, plus `write_parallel` parts
while they are sent.
Never: trust a client's offsets or another namespace's session id, or block the
server's loop on the store or a disk.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import xxhash

from .. import blocks, placement
from ..dataset import JOURNALED, Dataset, normalize
from ..errors import AlreadyExists, FluidError, InvalidRequest, NotFound, Unavailable
from ..tiering import layout
from ..understore import Mount
from ..understore.mount import translate
from ..understore.versions import norm_etag, parse_version
from .journal import JournalFile
from .upload import LocalUpload, PartUpload, commit_upload, open_upload

log = logging.getLogger(__name__)
RECHECK = 1.0      # seconds a dataset's record is trusted at a commit (then asked again)
OPS = ("write_open", "write", "write_close", "write_cache", "write_abort", "put")

# (ns, dataset name, path, dataset uid) -> the entry the master lists for the file written
TellMaster = Callable[[str, str, str, str], Awaitable[dict]]


@dataclass(eq=False)
class Session:
    id: str
    ns: str
    ds: Dataset
    path: str                   # normalized, in the dataset
    mount: Mount
    rel: str                    # in the mount
    exclusive: bool
    file: object = None         # the upload (upload.py), open for writing
    spool: object = None        # cache-through: the bytes written, to cache from
    written: int = 0
    last_chunk: tuple | None = None     # (offset, length, digest): a re-send is taken once
    last: float = field(default_factory=time.monotonic)
    busy: asyncio.Lock = field(default_factory=asyncio.Lock)
    committing: bool = False    # from here on until it is in the store: never aborted
    finishing: asyncio.Task | None = None   # the commit and listing, once begun
    running: object = None     # the store call in a thread now (cf.Future), if any
    inflight: asyncio.Task | None = None    # the chunk before, being written (one at most)
    committed: dict | None = None       # the store's answer to the commit
    entry: dict | None = None   # once listed, for write_cache

    @property
    def dsid(self) -> str:
        return f"{self.ns}/{self.ds.name}"


class Writes:
    def __init__(self, config, store, access, mount_of, tell_master: TellMaster,
                 labels: dict, resources: list, pending) -> None:
        """`store`: the BlockStore; `access`: tokens and records (access.py); `mount_of(ns,
        ds, spec)`: our mount table (reads.py); `tell_master(ns, name, path, uid)`: the
        master lists a file written (awaited on the loop); `labels`/`resources`: this
        node's, matched against a dataset's selector before a block is cached."""
        self.config, self.store, self._access = config, store, access
        self._mount_of, self._tell = mount_of, tell_master
        self.pending = pending             # pending.Pending: async-through and must-cache
        self._labels, self._resources = labels, resources
        self.sessions: dict[str, Session] = {}
        self.closed: collections.OrderedDict = collections.OrderedDict()  # id -> (ns, reply)
        self.counters = dict(files_written=0, bytes_written=0, writes_aborted=0,
                             write_blocks_cached=0, write_cache_skipped=0, writes_unlisted=0)
        self._pool = ThreadPoolExecutor(config.write_threads, thread_name_prefix="fc-write")
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task] = set()
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
            except BaseException:
                await self._abort(s)
                raise
            return await self._close(s), None
        if req.op == "write_close":
            done = self.closed.get(a.get("w")) if isinstance(a.get("w"), str) else None
            if done is not None and done[0] == ns:
                return done[1], None          # a retried close: it was committed
        s = self._session(ns, a)
        if req.op == "write_close" and s.finishing is not None:
            return await asyncio.shield(s.finishing), None    # asked again meanwhile
        if req.op == "write_abort" and s.committing:
            return {"aborted": False, "committing": True}, None
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
            return await self._close(s), None
        if req.op == "write_cache":
            return await self._cache(s, a.get("b")), None
        await self._abort(s)                                 # write_abort
        return {"aborted": True}, None

    def _session(self, ns: str, args: dict) -> Session:
        sid = args.get("w")
        s = self.sessions.get(sid) if isinstance(sid, str) else None
        if s is None or s.ns != ns:        # another namespace's id is no id at all
            raise NotFound("no such write (aborted, idle too long, or never opened)")
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
            await self._run(ns, self._open_under, s)
        except BaseException:
            self.sessions.pop(s.id, None)
            raise
        return s

    def _check_room(self, ns: str) -> None:
        cap = self.config.write_sessions
        mine = sum(1 for s in self.sessions.values() if s.ns == ns)
        if len(self.sessions) >= cap or mine >= max(1, cap // 2):
            raise Unavailable(f"this worker has {len(self.sessions)} files open for "
                              f"writing ({mine} of namespace {ns}; its limits: {cap}, "
                              f"{max(1, cap // 2)}); close some, or try again")

    def _open_under(self, s: Session) -> None:
        if s.ds.write_mode in JOURNALED:      # kept here, uploaded later (or never)
            with translate(s.path):
                under = s.mount.under_path(s.rel)   # refused now, not at the upload
                if s.exclusive and s.ds.write_mode == "async-through" and \
                        s.mount.fs.exists(under):
                    raise AlreadyExists(f"{s.ds.name}/{s.path} exists")
            s.file = self.pending.journal.open(s.id, s.ns)
            return
        with translate(s.path):
            try:
                s.file = open_upload(s.mount, s.rel, s.exclusive, self.config.write_part,
                                     self.config.write_parallel)
            except AlreadyExists:
                raise AlreadyExists(f"{s.ds.name}/{s.path} exists") from None
        if s.ds.write_mode == "cache-through":
            s.spool = tempfile.TemporaryFile(dir=self.config.write_spool or None)

    async def _write(self, s: Session, offset: int, data: bytes) -> None:
        async with s.busy:
            if s.file is None or s.committing:
                raise InvalidRequest("this write is closed")
            if offset != s.written:
                if s.last_chunk == (offset, len(data), xxhash.xxh3_64_intdigest(data)) \
                        and offset + len(data) == s.written:
                    return                    # the last chunk again (a client's retry)
                raise InvalidRequest(f"write at {offset}; the file has {s.written} bytes "
                                     "(chunks must come in order)")
            await self._settled(s)
            if data:
                s.inflight = self._spawn(self._run(s.ns, self._write_under, s, data,
                                                   session=s))
            s.written += len(data)
            s.last_chunk = (offset, len(data), xxhash.xxh3_64_intdigest(data))
            s.last = time.monotonic()

    @staticmethod
    async def _settled(s: Session) -> None:
        """The chunk handed to a write thread before is written, or its error is raised
        here (then the session is aborted). One chunk is written while the next arrives:
        a write's reply says its chunk was taken, the next write or the close says it
        was written. A waiter's timeout never cancels the write itself."""
        t = s.inflight
        if t is not None:
            try:
                await asyncio.shield(t)
            except asyncio.CancelledError:
                if t.cancelled():       # aborted meanwhile (write_abort, the reaper)
                    raise NotFound("this write was aborted meanwhile; nothing of it is "
                                   "kept") from None
                raise                   # our own waiter's: the chunk is still written
            s.inflight = None

    def _write_under(self, s: Session, data: bytes) -> None:
        if isinstance(s.file, JournalFile):
            s.file.write(data)                  # its own errors (journal full, disk full)
            return
        with translate(s.path):
            s.file.write(data)
        if s.spool is not None:
            s.spool.write(data)

    async def _close(self, s: Session) -> dict:
        """Commit, then have the master list it: shielded from the request's timeout
        (a commit begun is finished, and the master told, whatever the client does)."""
        async with s.busy:
            if s.file is None or s.committing:
                raise InvalidRequest("this write is closed")
            try:
                await self._settled(s)
                rec = await self._record(s)
                if rec.dataset.uid != s.ds.uid:
                    raise NotFound(f"dataset {s.ds.name} was removed while this file was "
                                   "written; nothing was committed")
                rec.dataset.check_writable()
            except BaseException:
                await self._abort(s)
                raise
            s.committing = True
        s.finishing = self._spawn(self._finish(s))
        return await asyncio.shield(s.finishing)

    async def _record(self, s: Session):
        """The dataset's record at most RECHECK seconds old; while the master does not
        answer, the one held (within record_ttl): an outage does not throw uploads away."""
        try:
            return await self._access.dataset(s.ns, s.ds.name, max_age=RECHECK)
        except Unavailable:
            held = self._access.held(s.ns, s.ds.name)
            if held is None:
                raise
            return held

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _finish(self, s: Session) -> dict:
        try:
            await self._run(s.ns, self._commit, s, session=s)
        except BaseException:
            s.committing = False
            await self._abort(s)
            raise
        s.file, s.committing, s.last = None, False, time.monotonic()
        self.counters["files_written"] += 1
        self.counters["bytes_written"] += s.written
        if "journal" in (s.committed or {}):    # kept here: listed as such, uploaded later
            self._drop(s)
            return self._remember(s, await self.pending.kept(s.committed["journal"],
                                                             s.exclusive))
        try:
            entry = await self._tell(s.ns, s.ds.name, s.path, s.ds.uid)
        except Unavailable as exc:
            # in the store, not yet listed: told again in the background; readers see it
            # within the dataset's sync interval at worst
            self._drop(s)
            self.counters["writes_unlisted"] += 1
            log.warning("the master did not list %s/%s: %s", s.ds.name, s.path, exc)
            self._spawn(self._tell_later(s))
            return self._remember(s, {"entry": None})
        except BaseException:
            self._drop(s)                   # refused (the dataset went): the caller hears
            raise
        if s.spool is None or not entry.get("size"):
            self._drop(s)
            return self._remember(s, {"entry": entry})
        if not _same_version(s, entry):       # another writer came between: not ours
            self.counters["write_cache_skipped"] += 1
            self._drop(s)
            return self._remember(s, {"entry": entry})
        s.entry = entry                      # write_cache comes next
        return self._remember(s, {"entry": entry, "w": s.id})

    def _remember(self, s: Session, reply: dict) -> dict:
        self.closed[s.id] = (s.ns, reply)
        while len(self.closed) > 1024:
            self.closed.popitem(last=False)
        return reply

    async def _tell_later(self, s: Session) -> None:
        for delay in (1, 2, 4, 8, 16, 32):
            await asyncio.sleep(delay)
            try:
                await self._tell(s.ns, s.ds.name, s.path, s.ds.uid)
                return
            except Unavailable:
                continue
            except FluidError:
                return

    def _commit(self, s: Session) -> None:
        if isinstance(s.file, JournalFile):   # durable here; listed as kept (pending.py)
            s.committed = {"journal": s.file.commit(
                ns=s.ns, ds=s.ds.name, uid=s.ds.uid, path=s.path, mode=s.ds.write_mode,
                closed=time.time(), expires=self.pending.expiry(s.ds))}
            return
        m = s.mount
        with translate(s.path):
            m.fs.invalidate_cache(m.under_path(s.rel))
            if s.exclusive and m.fs.exists(m.under_path(s.rel)):
                raise AlreadyExists(f"{s.ds.name}/{s.path} exists")  # made meanwhile
            s.committed = commit_upload(s.file)   # the object appears whole / the rename

    async def _cache(self, s: Session, indexes) -> dict:
        """Cache blocks `indexes` of the committed file from the spool (the caller named
        the ones this worker owns). The session ends here."""
        if s.entry is None or s.spool is None:
            raise InvalidRequest("write_cache follows write_close of a cache-through write")
        try:
            count = blocks.block_count(s.entry["size"], self.config.block_size)
            if not isinstance(indexes, list) or not all(
                    isinstance(i, int) and not isinstance(i, bool) and 0 <= i < count
                    for i in indexes):
                raise InvalidRequest(f"write_cache needs block indexes below {count}")
            async with s.busy:
                cached = await self._run(s.ns, self._cache_blocks, s, sorted(set(indexes)))
        finally:
            self._drop(s)
        self.counters["write_blocks_cached"] += cached
        return {"cached": cached}

    def _cache_blocks(self, s: Session, indexes: list[int]) -> int:
        if not placement.matches(s.ds.selector, self._labels, self._resources):
            return 0
        bs, entry = self.config.block_size, s.entry
        # the key from our own mount table and the version the master listed (checked
        # to be this commit's: _same_version)
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
        if self.sessions.get(s.id) is not s or s.committing:
            return                          # gone already, or being committed: never abort
        t, s.inflight = s.inflight, None
        if t is not None and not t.done():
            t.cancel()      # not begun: it never begins; begun: _discard waits for it
        elif t is not None and not t.cancelled():
            t.exception()   # its error is why we abort: retrieved, not logged as lost
        self._drop(s)
        if s.file is not None:
            self.counters["writes_aborted"] += 1
            file, s.file = s.file, None
            try:
                await self._run(s.ns, _discard, file, s.running)
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
            for s in self.idle(time.monotonic() - self.config.write_idle):
                await self._abort(s)

    def idle(self, limit: float) -> list[Session]:
        """Sessions silent since before `limit`, owed nothing and writing nothing (a
        committed cache-through file whose write_cache never came, too)."""
        return [s for s in self.sessions.values()
                if s.last < limit and not s.busy.locked() and not s.committing
                and (s.inflight is None or s.inflight.done())]

    async def _run(self, ns: str, fn, *args, session: Session | None = None):
        """`fn(*args)` on a write thread; a namespace holds at most half of them. The
        slot is given back when the thread is done, not when the caller stops waiting
        (a request that times out on a hanging store keeps holding its slot)."""
        slots = self._slots.get(ns)
        if slots is None:
            slots = self._slots[ns] = asyncio.Semaphore(max(1, self.config.write_threads // 2))
        await slots.acquire()
        loop = asyncio.get_running_loop()
        try:
            fut = self._pool.submit(fn, *args)
        except BaseException:
            slots.release()
            raise
        fut.add_done_callback(lambda _: loop.call_soon_threadsafe(slots.release))
        if session is not None:
            session.running = fut
        return await asyncio.wrap_future(fut)

    def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _same_version(s: Session, entry: dict) -> bool:
    """Is the listed entry the file this session committed? By the store's answer to
    the commit: S3's ETag; a local file's mtime and inode (its version's parts)."""
    got = s.committed or {}
    if entry.get("size") != s.written:
        return False
    if "ETag" in got:
        mine = norm_etag(got["ETag"])
        return mine is not None and mine == norm_etag(entry.get("ETag"))
    if "mtime_ns" in got:
        try:
            v = parse_version(entry.get("version"))
        except ValueError:
            return False
        return v.kind == "f" and v.value == str(got["mtime_ns"]) and v.ino == got["ino"]
    return False


def _discard(file, running=None) -> None:
    """Give up an upload, once the store call still running on it (`running`, a
    cf.Future) is done: an S3 multipart upload is aborted, a local temporary file
    removed (upload.py); nothing is committed."""
    if running is not None:
        futures.wait([running])
    if isinstance(file, (PartUpload, LocalUpload, JournalFile)):
        file.abort()
        return
    file.discard()                    # another store's fsspec file: its upload given up
    file.closed = True                # and never flushed after this
