"""Files kept on this worker: async-through's until they are uploaded, must-cache's until
they are removed or their TTL ends.

A file closed in one of these modes is durable in the journal (journal.py) before its
writer hears so; then the master is told (`pending_add`), and lists it with a version
`c:HOLDER:ID` that sends every read of it here, where it is served from the journal,
checksummed. async-through files are uploaded in the background, oldest first, with
exponential backoff on failure (1 s doubling to 60 s, forever: the store may be down for
hours); the master says when one may go (`pending_begin`: of two writers of one path the
later close is uploaded last, an older one replaced meanwhile is dropped) and lists the
store's version once it is there (`pending_done`). An uploaded file stays readable here
for `KEEP_UPLOADED` seconds (readers that opened the kept version finish on it), then
goes. A restarted worker finds its journal again and tells the master at once; a
restarted master is told again (its incarnation changes in the heartbeat's reply).
Owns: the kept files, their uploads and their state, reads of them, TTL expiry.
Never: upload a file the master did not let go (a newer close of its path came), serve
another namespace's file, or block the server's loop (disk and store in threads).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..dataset import Dataset, normalize
from ..errors import FluidError, NotFound, StaleVersion, Unavailable
from ..understore.mount import translate
from ..understore.versions import parse_cached
from .journal import Entry, Journal
from .upload import commit_upload, open_upload

log = logging.getLogger(__name__)
KEEP_UPLOADED = 60.0        # seconds an uploaded file is still served from here
MAX_BACKOFF = 60.0

# (method, *args) -> the master's answer: MasterActor.pending_<method>
AskMaster = Callable[..., Awaitable[dict]]


@dataclass
class State:
    registered: bool = False
    tries: int = 0
    due: float = 0.0            # monotonic time of the next upload attempt
    error: str = ""
    uploading: bool = False
    uploaded: bool = False      # in the store; the master may not know yet
    dropped: bool = False       # removed or replaced: goes once its upload is over
    gone_at: float = 0.0        # uploaded: served until then


class Pending:
    def __init__(self, config, node_id: str, journal: Journal, access,
                 mount_of, ask: AskMaster) -> None:
        """`mount_of(ns, ds, spec)`: our mount table; `ask(method, *args)`: the master.
        Uploads: at most half the `write_threads` at once, a quarter per namespace."""
        self.config, self.node_id, self.journal = config, node_id, journal
        self._access, self._mount_of, self._ask = access, mount_of, ask
        self.entries: dict[str, Entry] = {}
        self.state: dict[str, State] = {}
        self.counters = dict(uploads_done=0, upload_retries=0, kept_expired=0)
        self.last_error = ""
        self.inc: str | None = None          # the master's incarnation we registered with
        # uploads have threads of their own: a store that hangs never holds up a write
        self._pool = ThreadPoolExecutor(max(1, config.write_threads // 2),
                                        thread_name_prefix="fc-upload")
        self._wake: asyncio.Event | None = None
        self._settled: asyncio.Event | None = None   # set when an upload ends
        self._task: asyncio.Task | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def adopt(self) -> int:
        """A (re)started worker's journal: its files, told to the master once the loop
        runs (`start`). Not on the loop: it reads the disk."""
        for e in self.journal.scan():
            self.entries[e.id] = e
            self.state[e.id] = State()
        return len(self.entries)

    def start(self) -> None:
        """On the server's loop: the uploader, the expiry and the re-telling."""
        if self._task is None:
            self._wake, self._settled = asyncio.Event(), asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def saw_master(self, inc: str | None) -> None:
        """The master's incarnation (a heartbeat's, a reply's): a restarted master is
        told again of every file still kept (not of those uploaded already)."""
        if inc and self.inc and inc != self.inc:
            for st in self.state.values():
                if not (st.uploaded or st.gone_at):
                    st.registered = False
            self._poke()
        self.inc = inc or self.inc

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- from the write room ------------------------------------------------------------
    def expiry(self, ds: Dataset) -> float:
        return time.time() + ds.write_ttl if ds.write_ttl else 0.0

    async def kept(self, e: Entry, exclusive: bool) -> dict:
        """A file just committed to the journal: the master lists it. Refused (the
        dataset went, or "xb" and the path is taken): it goes, the writer hears why.
        Unheard: it is kept, told later; the writer's reply has no entry."""
        self.entries[e.id], self.state[e.id] = e, State()
        try:
            reply = await self._register(e, exclusive)
        except Unavailable as exc:
            log.warning("the master did not list kept file %s/%s yet: %s", e.ds, e.path, exc)
            self._poke()
            return {"entry": None}
        except BaseException:
            await self._forget(e.id)
            raise
        self._poke()
        return {"entry": reply.get("entry")}

    async def _register(self, e: Entry, exclusive: bool = False, again: bool = False):
        reply = await self._ask("add", e.to_record(), self.node_id, exclusive, again)
        self.saw_master(reply.get("inc"))
        st = self.state.get(e.id)
        if reply.get("state") == "superseded":
            await self._forget(e.id)
        elif st is not None:
            st.registered = True
        return reply

    # -- the master's -------------------------------------------------------------------
    async def drop(self, ids: list[str]) -> None:
        """Removed or replaced at the master: goes (once an upload under way is over)."""
        for fid in ids:
            st = self.state.get(fid)
            if st is None:
                continue
            st.dropped = True
            if not st.uploading:
                await self._forget(fid)

    # -- reads --------------------------------------------------------------------------
    async def read(self, ns: str, r) -> bytes:
        """Block `r.index` of a kept file, for a read whose version is `c:` this worker."""
        holder, fid = parse_cached(r.version) or ("", "")
        e = self.entries.get(fid)
        st = self.state.get(fid)
        if holder != self.node_id or e is None or st is None or st.dropped or \
                e.ns != ns or e.ds != r.dataset or e.path != normalize(r.path) or \
                e.size != r.size:
            raise StaleVersion(f"{r.dataset}/{r.path}: that version is not kept here any "
                               "more (uploaded or replaced); list it again")
        start = r.index * self.config.block_size      # (kept with another block size, too)
        length = min(self.config.block_size, e.size - start)
        return await asyncio.get_running_loop().run_in_executor(
            None, self.journal.read, e, start, length)

    # -- the loop -----------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("kept files' round")
            wait = self._next_wait()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    def _next_wait(self) -> float:
        """Seconds until something is due: a retry, a re-telling, an upload, an
        uploaded file's end, a TTL (at most 5 s: the loop looks again)."""
        now, wall, wait = time.monotonic(), time.time(), 5.0
        for fid, e in list(self.entries.items()):
            st = self.state.get(fid)
            if st is None or st.uploading:
                continue
            if st.gone_at:
                wait = min(wait, st.gone_at - now)
            elif e.expires and wall >= e.expires:       # expired: telling the master
                wait = min(wait, st.due - now)
            elif e.expires:
                wait = min(wait, e.expires - wall)
            if not st.gone_at and st.due > now and (
                    not st.registered or e.mode == "async-through"):
                wait = min(wait, st.due - now)      # a retry (one due now but held by
                #  the upload caps waits for an upload to end: that wakes the loop)
        return max(0.05, wait)

    async def _round(self) -> None:
        now, wall = time.monotonic(), time.time()
        cap, share = max(1, self.config.write_threads // 2), \
            max(1, self.config.write_threads // 4)
        running, by_ns = 0, {}
        for fid, st in list(self.state.items()):
            e = self.entries.get(fid)
            if st.uploading and e is not None:
                running += 1
                by_ns[e.ns] = by_ns.get(e.ns, 0) + 1
        for fid, e in list(self.entries.items()):
            st = self.state.get(fid)
            if st is None or st.uploading:
                continue
            if st.gone_at and now >= st.gone_at:
                await self._forget(fid)
            elif e.expires and wall >= e.expires:
                if now >= st.due:
                    await self._expire(e, st)
            elif not st.registered and now >= st.due:
                try:
                    await self._register(e, again=True)
                except Unavailable as exc:
                    self._failed(st, exc)
                except FluidError as exc:           # the dataset went: nothing to keep
                    log.warning("dropping kept %s/%s: %s", e.ds, e.path, exc)
                    await self._forget(fid)
            elif e.mode == "async-through" and not st.gone_at and now >= st.due and \
                    running < cap and by_ns.get(e.ns, 0) < share:
                st.uploading = True
                running += 1
                by_ns[e.ns] = by_ns.get(e.ns, 0) + 1
                asyncio.get_running_loop().create_task(self._upload(e, st))

    async def _expire(self, e: Entry, st: State) -> None:
        try:
            await self._ask("gone", e.ns, e.ds, e.uid, e.path, e.id)
        except Unavailable as exc:
            self._failed(st, exc)                   # told again, with backoff
            return
        except FluidError:
            pass
        self.counters["kept_expired"] += 1
        await self._forget(e.id)

    async def _upload(self, e: Entry, st: State) -> None:
        try:
            if not st.uploaded:
                answer = await self._ask("begin", e.ns, e.ds, e.uid, e.path, e.id)
                if answer.get("state") == "unknown":
                    st.registered = False           # a restarted master: told again
                    return
                if answer.get("state") == "drop":
                    st.dropped = True
                    return
                if answer.get("state") == "wait":   # an older close of the path is going
                    st.due = time.monotonic() + 1.0
                    return
                rec = await self._access.dataset(e.ns, e.ds, True)
                if rec.dataset.uid != e.uid:
                    raise NotFound(f"dataset {e.ds} was made again since {e.path} was kept")
                try:
                    await asyncio.get_running_loop().run_in_executor(
                        self._pool, self._send, e, rec.dataset)
                except NotFound as exc:     # (a bucket, a journal file): retried, not dropped
                    raise FluidError(f"uploading {e.ds}/{e.path}: {exc}") from None
                st.uploaded = True
            await self._ask("done", e.ns, e.ds, e.uid, e.path, e.id)
            # uploaded: a restart must not find it again (its bytes are served 60 s more)
            await asyncio.get_running_loop().run_in_executor(None, self.journal.uploaded,
                                                             e.id)
            self.counters["uploads_done"] += 1
            st.gone_at = time.monotonic() + KEEP_UPLOADED
            st.tries, st.error = 0, ""
        except NotFound as exc:                     # the dataset went: nothing to upload
            log.warning("dropping kept %s/%s: %s", e.ds, e.path, exc)
            st.dropped = True
            try:
                await self._ask("release", e.ns, e.ds, e.uid, e.path, e.id)
            except FluidError:
                pass
        except Exception as exc:  # noqa: BLE001 - retried with backoff, the error shown
            self._failed(st, exc)
            log.warning("upload of %s/%s failed (try %d): %s", e.ds, e.path, st.tries, exc)
            if not st.uploaded:                 # another close of the path may go first
                try:
                    await self._ask("release", e.ns, e.ds, e.uid, e.path, e.id)
                except FluidError:
                    pass
        finally:
            st.uploading = False
            if st.dropped:
                await self._forget(e.id)
            self._settled.set()
            self._poke()

    def _failed(self, st: State, exc: BaseException) -> None:
        st.tries += 1
        st.error = self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        st.due = time.monotonic() + min(MAX_BACKOFF, 2.0 ** (st.tries - 1))
        self.counters["upload_retries"] += 1

    def _send(self, e: Entry, ds: Dataset) -> None:
        """The kept file into the under store, whole or not at all (a write thread)."""
        spec, rel = ds.resolve(e.path)
        mount = self._mount_of(e.ns, ds, spec)
        with translate(e.path):
            f = open_upload(mount, rel, False, self.config.write_part,
                            self.config.write_parallel)
            try:
                for chunk in self.journal.chunks(e):
                    f.write(chunk)
            except BaseException:
                (f.abort if hasattr(f, "abort") else f.discard)()
                raise
            commit_upload(f)

    async def _forget(self, fid: str) -> None:
        e = self.entries.pop(fid, None)
        self.state.pop(fid, None)
        if e is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.journal.remove,
                                                             fid, e.ns, e.size)

    # -- status -------------------------------------------------------------------------
    async def flush(self, timeout: float) -> bool:
        """Wait (up to `timeout` s) until no async-through file waits for its upload."""
        deadline = time.monotonic() + timeout
        while self.waiting()[0]:
            left = deadline - time.monotonic()
            if left <= 0 or self._settled is None:
                return False
            self._settled.clear()
            self._poke()
            try:
                await asyncio.wait_for(self._settled.wait(), left)
            except asyncio.TimeoutError:
                return False
        return True

    def waiting(self) -> tuple[int, int]:
        """(files, bytes) of async-through files not in the store yet."""
        files = []
        for fid, e in list(self.entries.items()):     # (a snapshot: stats runs on a thread)
            st = self.state.get(fid)
            if e.mode == "async-through" and st is not None and not st.gone_at and \
                    not st.dropped:
                files.append(e)
        return len(files), sum(e.size for e in files)

    def stats(self) -> dict:
        files, nbytes = self.waiting()
        kept = [e for e in list(self.entries.values()) if e.mode == "must-cache"]
        return dict(self.counters, uploads_pending=files, uploads_pending_bytes=nbytes,
                    kept_files=len(kept), kept_bytes=sum(e.size for e in kept),
                    journal_bytes=self.journal.used)
