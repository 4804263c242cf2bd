"""Writing a file of `fluid://`: bytes streamed through a worker to the under store.

A file opened with "wb" (or "xb": only if absent) buffers up to one chunk (the cluster's
`write_chunk`, 8 MiB) and sends each full chunk to one worker in order, so a 20 GiB
checkpoint never sits in memory; the worker streams it into the store (multipart for S3)
and, when the file is closed, commits it and has the master list it. A small file goes
in one request. The file is visible whole or not at all: leaving a `with` block on an
exception, `discard()`, or a file dropped without `close()` aborts the upload.
For cache-through datasets the committed file's blocks are then cached on their owners:
the writing worker caches those it owns from what it was sent; other owners fetch theirs.
Credentials stay on workers: the client names a dataset and a path, never a store.
Owns: choosing the worker (this node's, else one by the path's rendezvous rank), the
write requests, and the cache-through fills.
Never: retry a half-sent file on another worker (the caller gets the error: nothing
half-written is ever visible).
"""
from __future__ import annotations

import io
import sys

from fsspec.spec import AbstractBufferedFile

from .. import blocks, placement
from ..errors import FluidError, InvalidRequest, Unavailable
from ..wire import BlockRead

DEFAULT_CHUNK = 8 * 1024**2


def writer_worker(cluster, dataset: str, path: str) -> dict:
    """The worker a file is written through: this node's (it may cache the file's
    blocks where they are read), else the first by rendezvous rank of the path."""
    m = cluster.map()
    ds = cluster.dataset(dataset)
    order = placement.route(f"w|{dataset}/{path}", m["workers"], ds.get("selector"),
                            cluster.local_id)
    if not order:
        raise Unavailable("no worker is in the cluster to write through")
    return next(w for w in m["workers"] if w["id"] == order[0])


class FluidWriter(AbstractBufferedFile):
    """A file of `fluid://` open for writing ("wb" or "xb")."""

    def __init__(self, fs, path: str, mode: str = "wb", autocommit: bool = True) -> None:
        """`autocommit=False` (inside `fs.transaction`): the bytes are sent at close and
        committed by `commit()` when the transaction ends (`discard()` drops them)."""
        cluster = fs.client.cluster
        self.chunk = int(cluster.map().get("write_chunk") or DEFAULT_CHUNK)
        self._exc_at_open = sys.exc_info()[1]
        super().__init__(fs, path, mode=mode, block_size=self.chunk, autocommit=autocommit,
                         cache_type="none")
        self.cluster = cluster
        self.dataset, _, self.rel = path.partition("/")
        self.worker = writer_worker(cluster, self.dataset, self.rel)
        self.session: str | None = None
        self.small = False              # the whole file goes in one `put` at close
        self.entry: dict | None = None

    def _call(self, op: str, args: dict, payload: bytes | memoryview = b""):
        return self.cluster.call(self.worker["address"], op, args, payload=payload)

    # -- fsspec's buffered-file hooks -------------------------------------------------
    def _initiate_upload(self) -> None:
        if self.forced and self.buffer.tell() <= self.chunk and self.autocommit:
            self.small = True           # a small file: one `put` at close
            return
        result, _ = self._call("write_open", {"ds": self.dataset, "p": self.rel,
                                              "x": "x" in self.mode})
        self.session = result["w"]

    def _upload_chunk(self, final: bool = False) -> bool:
        if self.session is None and not self.small:
            raise InvalidRequest(f"fluid://{self.path}: this write was aborted (an earlier "
                                 "error); nothing of it was committed")
        data = self.buffer.getbuffer()
        try:
            if self.small:              # the whole file, at close
                result, _ = self._call("put", {"ds": self.dataset, "p": self.rel,
                                               "x": "x" in self.mode}, data)
                self.small = False
                self._committed(result)
                return True
            for start in range(0, len(data), self.chunk):
                piece = data[start:start + self.chunk]
                self._call("write", {"w": self.session, "o": self.offset + start}, piece)
            if final and self.autocommit:
                self.commit()
        except BaseException:
            self._abort()
            raise
        finally:
            data.release()
        return True

    def commit(self) -> None:
        """Make the file visible (at close; in a transaction, when it ends)."""
        if self.session is None:
            return
        result, _ = self._call("write_close", {"w": self.session})
        self.session = None
        self._committed(result)

    def _committed(self, result: dict) -> None:
        self.entry = result["entry"]
        self.fs.wrote(self.path)
        if result.get("w"):             # cache-through: the blocks go to their owners
            self._cache(result["w"], self.entry)

    def _cache(self, session: str, entry: dict) -> None:
        """Blocks the writing worker owns are cached from what it was sent; the other
        owners fetch theirs (a read of one byte fills the whole block). A failure here
        leaves the file written: its blocks are fetched when first read."""
        m = self.cluster.map()
        bs, ds = m["block_size"], self.cluster.dataset(self.dataset)
        replicas = ds.get("replicas", 1)
        here, elsewhere = [], []
        for i in range(blocks.block_count(entry["size"], bs)):
            order = placement.route(blocks.block_key(entry["fid"], i, bs), m["workers"],
                                    ds.get("selector"))[:replicas]
            if self.worker["id"] in order:
                here.append(i)
            elsewhere += [(wid, i) for wid in order if wid != self.worker["id"]]
        try:
            self._call("write_cache", {"w": session, "b": here})
            by_id = {w["id"]: w for w in m["workers"]}
            for wid, i in elsewhere:
                req = BlockRead(self.dataset, self.rel, entry["version"], entry["size"], i,
                                0, 1, entry["fid"], bs)
                self.cluster.call(by_id[wid]["address"], "read", req.to_args())
        except FluidError:
            pass

    def _abort(self) -> None:
        session, self.session, self.small = self.session, None, False
        if session is not None:
            try:
                self._call("write_abort", {"w": session})
            except FluidError:
                pass                     # the worker aborts it when it stays idle

    # -- whole or nothing -----------------------------------------------------------------
    def discard(self) -> None:
        """Give the file up: nothing of it reaches the store."""
        self._abort()
        self.buffer = io.BytesIO()
        self.closed = True

    def close(self) -> None:
        """Commit the file, unless it is closed while an exception raised since it was
        opened is being handled (fsspec's `with fsspec.open(...)`, a text wrapper, a
        library's `finally`): then it is discarded, never committed half-written."""
        if not self.closed and sys.exc_info()[1] not in (None, self._exc_at_open):
            self.discard()
            return
        super().close()

    def __exit__(self, kind, exc, tb):
        if kind is not None:
            self.discard()              # an exception inside `with`: never commit half
        else:
            self.close()

    def __del__(self):
        if not getattr(self, "closed", True):
            self.discard()               # never closed: never committed
