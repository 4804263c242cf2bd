"""The client's read path: one reader per process that turns byte ranges into blocks.

For each block of a read: if a worker on this machine holds it, read its tier file
directly (local.py: no RPC, checksum verified); else ask its owners by rendezvous rank
over TCP; when no owner answers, ask any other live worker, which reads it through from
the under store; when none answers at all, read the under store directly (direct.py)
if the user gave options of their own, else wait for the cluster up to
`failover_timeout`. Sequential readers of open files read ahead (readahead.py picks
the blocks), within the process's budget: blocks a local tier holds are left alone;
small reads have the next blocks' bytes fetched in the background (the next read takes
them from the file's futures); large reads hint the blocks after them to their owners.
A warm read makes no master call of its own but, every `map_ttl` seconds, one for the
cluster map and one for the dataset's record (cluster.py).
Owns: block arithmetic of reads (blocks.py's helpers), routing, failover, the threads
that fetch a large read's blocks at once, each open file's kept block and readahead.
Never: see under-store URLs or credentials (direct.py uses the user's own), or call
the filesystem.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from .. import blocks, placement
from ..backoff import Backoff
from ..config import ClientSettings
from ..errors import FluidError, NotHere, StaleVersion, Unavailable
from ..tiering import layout
from ..understore.versions import parse_cached
from ..wire import BlockRead
from .buffers import Buffer
from .cluster import Cluster
from .direct import DirectReader
from .jobs import each, fetching, in_fetch_thread, settle, submit_all, wait_all
from .local import TOUCH_CHUNK, LocalTiers
from .readahead import Budget, FileReads, Kept, Readahead


class BlockReader:
    """Bytes of listed file entries, block by block. One lives in one process: the
    filesystem makes a new one after a fork. `counters` says how reads were served."""

    def __init__(self, cluster: Cluster, short_circuit: bool = True,
                 direct: DirectReader | None = None) -> None:
        self.cluster = cluster
        self.settings: ClientSettings = cluster.settings
        self.counters = cluster.counters
        for name in ("short_circuit", "remote", "served", "failover", "waits",
                     "readahead", "direct", "prefetch", "corrupt_served", "batches"):
            self.counters.setdefault(name, 0)
        self.local = LocalTiers(cluster, self.settings, self.counters)
        self.short_circuit = short_circuit
        self.direct = direct
        self.budget = Budget(self.settings.readahead_budget)
        self._threads: ThreadPoolExecutor | None = None
        self._hints: ThreadPoolExecutor | None = None    # hints never queue before reads
        self._copiers: ThreadPoolExecutor | None = None  # local blocks: never behind a fetch
        self._lock = threading.Lock()

    def close(self) -> None:
        """Report pending hits, close the sockets and stop the threads now (a reader
        that is dropped does the same when it is collected)."""
        self.local.close()
        self.cluster.close()
        for pool in (self._threads, self._hints, self._copiers):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def flush(self) -> None:
        """Report pending short-circuit hits to their workers now."""
        self.local.flush()

    def _pool(self, attr: str, threads: int, name: str, initializer=None
              ) -> ThreadPoolExecutor:
        """The pool kept in `attr`, made on first use (in this process)."""
        pool = getattr(self, attr)
        if pool is None:
            with self._lock:
                pool = getattr(self, attr)
                if pool is None:
                    pool = ThreadPoolExecutor(threads, thread_name_prefix=name,
                                              initializer=initializer)
                    setattr(self, attr, pool)
        return pool

    def executor(self) -> ThreadPoolExecutor:
        """Threads that fetch the blocks of one large read at once, and a small reader's
        readahead."""
        return self._pool("_threads", self.settings.fanout, "fc-read", fetching)

    def copiers(self) -> ThreadPoolExecutor:
        """Threads that copy and check the local blocks of one large read at once (the
        copy and the checksum run outside the GIL). They never wait on a network, nor
        on each other: a read never queues behind another file's fetches there."""
        return self._pool("_copiers", _COPY_THREADS, "fc-copy")

    def hinter(self) -> ThreadPoolExecutor:
        """Threads that send readahead hints: apart from the reads' own, so a hint to a
        slow owner never holds a thread a read waits for."""
        return self._pool("_hints", _HINT_THREADS, "fc-hint")

    # -- one worker ---------------------------------------------------------------------
    def ask(self, w: dict, op: str, args: dict, req: BlockRead, key: str,
            into: memoryview | None = None):
        """(result, payload) of one `read` from worker `w`: from its serving processes
        when it has them (the block's checksum checked here), else, or when they do not
        hold it, from the worker itself."""
        serve = w.get("serve") if not req.version.startswith("c:") else None
        if serve:
            try:
                result, payload = self.cluster.call(serve, op, args, into=into, served=True)
            except (NotHere, Unavailable):
                pass
            else:
                if self.intact(key, req, result, payload):
                    self.counters["served"] += 1
                    return result, payload
        return self.cluster.call(w["address"], op, args, into=into)

    def intact(self, key: str, req: BlockRead, result: dict, payload) -> bool:
        """Does a served whole block match the checksum its reply carries (its tier
        file's, bound to the key, the asking namespace's dataset, file id and index)?
        A reply without one was verified by its server."""
        digest = result.get("x")
        if digest is None:
            return True
        owner = f"{self.cluster.endpoint.namespace}/{req.dataset}"
        if len(payload) == result.get("n") and layout.checksum(
                key, payload, layout.meta_bytes(owner, req.fid, req.index)) == digest:
            return True
        self.counters["corrupt_served"] += 1
        return False

    # -- ranges of a file -------------------------------------------------------------
    def read(self, entry: dict, start: int, end: int) -> bytes:
        """Bytes [start, end) of a listed file entry (within the file)."""
        m = self.cluster.map()
        bs = m["block_size"]
        index = start // bs
        if end <= (index + 1) * bs:           # one block: most files of a training set
            return bytes(self.piece(entry, blocks.Piece(index, start - index * bs,
                                                        end - start), m))
        out = Buffer(max(0, min(end, entry["size"]) - start))   # read into, not copied
        return out.finish(self.read_into(entry, start, out.view))

    def read_into(self, entry: dict, start: int, out: memoryview) -> int:
        """Fill `out` with the file's bytes from `start` (fewer at the end of the file);
        returns how many. Each block lands straight in its place in `out`, all at once:
        the whole blocks a local tier holds are read there and checked in place on the
        copy threads while the others are fetched from their workers on the fetch
        threads - or, when this is itself a fetch thread, here after the local ones
        (its pool's threads may all be waiting on reads like this one: none may wait on
        a queue they fill). A local block gone meanwhile is fetched after."""
        m = self.cluster.map()
        bs = m["block_size"]
        size, fid = entry["size"], entry["fid"]
        local, rest, pos = [], [], 0
        for p in blocks.pieces(size, bs, start, start + len(out)):
            job = (p, out[pos:pos + p.length])
            pos += p.length
            whole = p.offset == 0 and p.length == blocks.block_length(size, bs, p.index)
            near = self.short_circuit and whole and \
                self.local.holds(blocks.block_key(fid, p.index, bs))
            (local if near else rest).append(job)

        def copy(job) -> bool:
            p, dst = job
            return self.local.read_into(blocks.block_key(fid, p.index, bs), dst,
                                        (fid, p.index))

        def fetch(job) -> None:
            p, dst = job
            data = self.piece(entry, p, m, into=dst)
            if data is not dst:
                if len(data) != len(dst):
                    raise StaleVersion(f"{entry['name']}: block {p.index} is not the listed "
                                       "size; list it again")
                dst[:] = data

        inline = in_fetch_thread()
        ahead = rest if rest and local and not inline else []
        futures = submit_all(self.executor, fetch, ahead)
        try:
            held = each(self.copiers, copy, local)
        except BaseException:
            for f in futures:
                f.cancel()
            wait_all(futures)
            raise
        settle(futures)
        later = [j for j, ok in zip(local, held) if not ok] + (rest if not ahead else [])
        if inline:
            for job in later:
                fetch(job)
        else:
            each(self.executor, fetch, later)
        return pos

    # -- an open file: its kept block and readahead ------------------------------------
    def read_at(self, f: FileReads, start: int, end: int, depth: int | None = None) -> bytes:
        """Bytes [start, end) of an open file (within the file): a read inside one
        block comes from the file's kept block; a larger one is read whole. `depth`:
        blocks to read ahead (the file's filesystem's setting now; else as opened)."""
        if depth is not None:
            f.depth = depth
        m = self.cluster.map()
        bs = m["block_size"]
        first, last = start // bs, (end - 1) // bs
        if first == last and end - start < bs:
            data = self._kept(f, first, m)
            off = start - first * bs
            return bytes(data[off:off + end - start])
        if f.entry["size"] > end:               # hinted first: fetched while we read
            self._hint_ahead(f, bs, first, last)
        return self.read(f.entry, start, end)   # the version the file was opened at

    def readinto_at(self, f: FileReads, start: int, view: memoryview,
                    depth: int | None = None) -> int:
        """Fill `view` from `start` of an open file; returns how many bytes (fewer at the
        end of the file). Reads under a block go through the kept block."""
        want = min(len(view), max(0, f.entry["size"] - start))
        bs = self.cluster.map()["block_size"]
        if want < bs:
            if want <= 0:
                return 0
            data = self.read_at(f, start, start + want, depth)
            view[:len(data)] = data
            return len(data)
        if depth is not None:
            f.depth = depth
        if f.entry["size"] > start + want:      # hinted first: fetched while we read
            self._hint_ahead(f, bs, start // bs, (start + want - 1) // bs)
        return self.read_into(f.entry, start, view[:want])

    def _kept(self, f: FileReads, index: int, m: dict) -> memoryview | bytes:
        """Whole block `index` of the open file, kept for the next read. Kept by (block
        size, index), and read with the map its block size came from: a cluster started
        again with another block size while the file is open never answers with a block
        of the old size (the worker refuses a read at another size). Taken from the
        file's readahead when it fetched the block: a fetch not begun yet is cancelled
        and read here (it may be queued behind other files'); one that failed with a
        cluster error raises it (StaleVersion, Unavailable: not waited for twice);
        another failure is read again here."""
        bs = m["block_size"]
        held = f.kept                 # one read of the shared slot: threads may replace it
        if held is not None and held.index == index and held.block_size == bs:
            return held.data
        data = None
        if f.pending:
            fut = f.take((bs, index))
            if fut is not None and not fut.cancel():
                try:
                    data = fut.result()
                except FluidError:
                    raise
                except Exception:  # noqa: BLE001 - read it again below, errors and all
                    data = None
        if data is None:
            data = self.piece(f.entry, blocks.Piece(index, 0, -1), m)
        if len(data) != blocks.block_length(f.entry["size"], bs, index):
            raise StaleVersion(f"{f.entry['name']}: block {index} is not the listed size; "
                               "list it again")
        f.kept = Kept(bs, index, data)
        if f.entry["size"] > (index + 1) * bs:     # a block follows: maybe read ahead
            self._read_ahead(f, m, index)
        return data

    def _wanted(self, f: FileReads, bs: int, first: int, last: int, large: bool):
        """The policy's blocks to get ahead after a read of `first..last`, without those
        a local tier holds (short-circuit reads are cheap), with their lengths."""
        if not f.depth and f.ahead is None:
            return ()
        if f.ahead is None:
            f.ahead = Readahead()
        size = f.entry["size"]
        wanted = f.ahead.after(bs, first, last, blocks.block_count(size, bs), f.depth,
                               large)
        return [(j, blocks.block_length(size, bs, j)) for j in wanted
                if not (self.short_circuit and
                        self.local.holds(blocks.block_key(f.entry["fid"], j, bs)))]

    def _read_ahead(self, f: FileReads, m: dict, index: int) -> None:
        """A small sequential reader moved to block `index`: fetch the bytes of the
        blocks the policy wants next in the background, as far as the process's budget
        allows; the next read takes them. Fetches of blocks behind it are dropped."""
        bs = m["block_size"]
        if f.pending:
            f.drop(lambda at: at[0] == bs and at[1] > index)
        for j, length in self._wanted(f, bs, index, index, False):
            at = (bs, j)
            if f.pending is not None and at in f.pending:
                continue
            if not self.budget.take(length):
                f.ahead.missed(j)      # over budget: read it when it is asked for
                break
            fut = self.executor().submit(self.piece, f.entry, blocks.Piece(j, 0, -1), m)
            if not f.add(at, fut, self.budget):   # closed, or another thread was first
                fut.cancel()
                self.budget.give(length)
                if f.closed:
                    return
                continue
            self.counters["readahead"] += 1

    def _hint_ahead(self, f: FileReads, bs: int, first: int, last: int) -> None:
        """A large sequential reader: the blocks the policy wants after it are hinted
        to their owners in the background, each holding its length of the process's
        budget until its hint is answered."""
        if f.pending:
            f.drop(lambda at: at[0] == bs and at[1] > last)
        for j, length in self._wanted(f, bs, first, last, True):
            if not self.budget.take(length):
                f.ahead.missed(j)      # over budget: the read fetches it when it comes
                break
            self.counters["readahead"] += 1
            self.hinter().submit(self._hint, f.entry, j, length)

    def _hint(self, entry: dict, index: int, length: int) -> None:
        """Ask block `index`'s owner to fetch it into its tier now; a hint, so errors
        are dropped (the read itself fails over if it must)."""
        try:
            if entry["version"].startswith("c:"):
                return                  # a kept file: read from its holder, not fetched
            m = self.cluster.map()
            bs = m["block_size"]
            req = self._request(entry, index, 0, -1, bs)
            order = self._route(blocks.block_key(entry["fid"], index, bs),
                                self.cluster.dataset(req.dataset), m)
            if order:
                address = next(w["address"] for w in m["workers"] if w["id"] == order[0])
                self.counters["prefetch"] += 1
                self.cluster.call(address, "prefetch", req.to_args())
        except FluidError:
            pass
        finally:
            self.budget.give(length)

    def land(self, entry: dict) -> bool:
        """Have every block of a file filled by its owner (from the store if it must),
        waiting until each has landed in a tier, or is staged for its next read; True if
        all did. The bytes stay on the workers."""
        if entry["version"].startswith("c:"):
            return True                     # a kept file is in its holder's journal
        m = self.cluster.map()
        bs = m["block_size"]
        by_id = {w["id"]: w for w in m["workers"]}
        landed = True
        for index, order in self._block_routes(entry, m):
            req = self._request(entry, index, 0, -1, bs)
            if not order:
                return False
            try:
                got, _ = self.cluster.call(by_id[order[0]]["address"], "prefetch",
                                           dict(req.to_args(), wait=True))
            except FluidError:
                return False
            landed = landed and bool(got.get("ok"))
        return landed

    def hint(self, entries: list[dict], soon: bool) -> int:
        """Tell the owners of these files' blocks when they are wanted again, the
        first file soonest: `soon`, kept as a hit keeps them (the first file's evicted
        last), else evicted first when room is needed (the first file's first). A hint:
        nothing is fetched or removed, errors are dropped; returns the blocks held."""
        m = self.cluster.map()
        address = {w["id"]: w["address"] for w in m["workers"]}
        keys: dict[str, list[str]] = {}
        for entry in reversed(entries):       # a worker applies them in order: the
            if entry["version"].startswith("c:"):            # last it applies wins
                continue                      # a kept file: in its holder's journal
            copies = max(1, self.cluster.dataset(entry["name"].partition("/")[0])
                         .get("replicas", 1))
            for index, order in self._block_routes(entry, m):
                key = blocks.block_key(entry["fid"], index, m["block_size"])
                for wid in order[:copies]:
                    if wid in address:
                        keys.setdefault(address[wid], []).append(key)
        held = 0
        for addr, ks in keys.items():
            for i in range(0, len(ks), TOUCH_CHUNK):
                try:
                    got, _ = self.cluster.call(addr, "touch", {
                        "keys": ks[i:i + TOUCH_CHUNK], "hint": "soon" if soon else "later"})
                except FluidError:
                    break
                held += int(got.get("held", 0))
        return held

    # -- blocks -----------------------------------------------------------------------
    def piece(self, entry: dict, piece: blocks.Piece, m: dict | None = None,
              into: memoryview | None = None) -> memoryview | bytes:
        """Bytes of one piece of a block (length -1: to the block's end): from a local
        tier file, else from a worker (received straight into `into` when given and
        returned as it)."""
        m = m or self.cluster.map()
        bs = m["block_size"]
        key = blocks.block_key(entry["fid"], piece.index, bs)
        if self.short_circuit and not entry["version"].startswith("c:"):
            length = blocks.block_length(entry["size"], bs, piece.index)
            data = self.local.read(key, length, (entry["fid"], piece.index))
            if data is not None:
                if piece.offset == 0 and piece.length in (-1, length):
                    return data                     # the bytes as read: no copy
                end = length if piece.length < 0 else piece.offset + piece.length
                return data[piece.offset:end]
        req = self._request(entry, piece.index, piece.offset, piece.length, bs)
        return self._remote(key, req, m, into)

    @staticmethod
    def _request(entry: dict, index: int, offset: int, length: int, bs: int) -> BlockRead:
        dataset, _, path = entry["name"].partition("/")
        return BlockRead(dataset, path, entry["version"], entry["size"], index, offset,
                         length, entry["fid"], bs)

    def _block_routes(self, entry: dict, m: dict):
        """(index, worker ids to ask in order) of each block of a file (one for an
        empty file)."""
        bs = m["block_size"]
        ds = self.cluster.dataset(entry["name"].partition("/")[0])
        for index in range(max(1, blocks.block_count(entry["size"], bs))):
            yield index, self._route(blocks.block_key(entry["fid"], index, bs), ds, m)

    def _route(self, key: str, ds: dict, m: dict, version: str = "") -> list[str]:
        """Worker ids to ask, in order: a kept file's holder alone (its only copy)."""
        kept = parse_cached(version)
        if kept is not None:     # (a draining holder still serves its kept files)
            return [w["id"] for w in placement.every_worker(m) if w["id"] == kept[0]]
        local = self.cluster.local_id if ds.get("routing") == "local-first" else None
        return placement.route(key, m["workers"], ds.get("selector"), local)

    def _remote(self, key: str, req: BlockRead, m: dict, into: memoryview | None = None):
        """The piece from the first worker that answers, in routing order; then the
        under store directly (with the user's options), else wait for the cluster."""
        ds = self.cluster.dataset(req.dataset)
        replicas = ds.get("replicas", 1)
        args = req.to_args()
        last: Exception | None = None
        backoff = Backoff(self.settings.failover_timeout)
        while True:
            order = self._route(key, ds, m, req.version)
            by_id = {w["id"]: w for w in placement.every_worker(m)}
            for rank, wid in enumerate(order):
                try:
                    result, payload = self.ask(by_id[wid], "read", args, req, key, into)
                except Unavailable as exc:
                    last = exc
                    continue
                self.cluster.saw_version(result.get("mv", 0), m)
                self.counters["remote"] += 1
                if rank >= replicas:
                    self.counters["failover"] += 1
                return payload
            if self.direct is not None and not req.version.startswith("c:"):
                # no worker answered and the user gave us under-store options of our own:
                # read the under store directly (never with the cluster's credentials)
                self.counters["direct"] += 1
                return self.direct.read(req)
            # no worker answered: membership may have moved (a worker restarted by Ray
            # comes back at a new address); wait for the cluster, up to failover_timeout
            if not backoff.wait():
                raise Unavailable(f"fluid://{req.dataset}/{req.path} (block {req.index}): "
                                  f"no worker could serve it within "
                                  f"{self.settings.failover_timeout:g}s (the under store "
                                  f"may be stalled or down): {last}")
            self.counters["waits"] += 1
            try:
                m = self.cluster.map(refresh=True)
            except Unavailable as exc:
                last = exc


__all__ = ["BlockReader", "FileReads"]


_HINT_THREADS = 4
_COPY_THREADS = max(2, min(8, os.cpu_count() or 2))
