"""The write verbs of `fluid://`: what FluidFileSystem (fs.py) does to names and bytes
in datasets created with a `--write-mode` that takes writes.

Bytes go through a worker (writer.py: streamed in chunks, committed at close, visible
whole or not at all); names change at the master (`rm`, `copy`, `mkdir`), which lists
the changed paths, moves the dataset's metadata epoch and frees the blocks of versions
replaced. A read-only dataset (the default) refuses every verb with PermissionError
before anything is sent. fsspec builds the rest on these: `pipe`, `put` (one file after
another), `mv` (copy, then rm), `copy` of many files, `touch`.
Owns: checking a dataset takes writes before sending, paging `rm` by count and bytes.
Never: carry store credentials (workers hold them) or write bytes itself.
"""
from __future__ import annotations

import os
import time

from fsspec.callbacks import DEFAULT_CALLBACK

from ..errors import AccessDenied, AlreadyExists, IsADirectory, NotFound, NotSupported
from .writer import FluidWriter

RM_PAGE = 500                  # paths per master `rm` call, at most
RM_PAGE_BYTES = 256 * 1024     # and their length in all (a frame is at most 1 MiB)


class WriteVerbs:
    """Mixed into FluidFileSystem (which gives `client`, `meta`, `_strip_protocol`,
    `expand_path`, `info`, `isdir`, `exists`, `open`)."""

    def _writable(self, path) -> tuple[str, str, str]:
        """(stripped path, dataset, path in it), once the dataset is known to take
        writes (as the cluster last said: the master and workers check again)."""
        path = self._strip_protocol(path)
        ds, _, rest = path.partition("/")
        if not ds:
            raise AccessDenied("fluid://: datasets are made with `fluidcache dataset "
                               "create`, not written")
        mode = self.client.cluster.dataset(ds).get("write_mode", "read-only")
        if mode == "read-only":
            raise AccessDenied(f"dataset {ds} is read-only (create it with a --write-mode "
                               "that takes writes: through, cache-through, async-through, "
                               "must-cache)")
        return path, ds, rest

    def _open_write(self, path, mode: str, autocommit: bool = True) -> FluidWriter:
        if mode not in ("wb", "xb"):
            raise NotSupported(f"mode {mode!r}: fluid:// files are written whole ('wb', "
                               "'xb'); object stores cannot append")
        path, _, rest = self._writable(path)
        if not rest:
            raise IsADirectory(f"fluid://{path} is a dataset, not a file")
        if mode == "xb" and self.exists(path):
            raise AlreadyExists(f"fluid://{path} exists")
        return FluidWriter(self, path, mode, autocommit)

    def wrote(self, path: str) -> None:
        """A file of ours was committed: what this process held of it goes (the
        master moved the dataset's epoch, so every other client drops it too)."""
        self.meta.invalidate(path)
        self.meta.expire(path.partition("/")[0])

    # -- bytes ------------------------------------------------------------------------------
    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        """Write `value` (bytes) as the whole file at `path`.

        Parameters
        ----------
        mode
            "overwrite", or "create": only if no file is there (FileExistsError).

        Raises
        ------
        PermissionError
            The dataset is read-only, or the token does not allow it (AccessDenied).
        FileExistsError
            mode="create" and the file exists (AlreadyExists).
        ConnectionError
            No worker could take the write (Unavailable); nothing was committed.
        """
        with self.open(path, "xb" if mode == "create" else "wb") as f:
            f.write(value)

    def put_file(self, lpath, rpath, callback=DEFAULT_CALLBACK, mode="overwrite", **kwargs):
        """Copy the local file `lpath` to `rpath`, streamed one chunk at a time (a local
        directory makes a directory). Raises as `pipe_file`."""
        if os.path.isdir(lpath):
            self.makedirs(rpath, exist_ok=True)
            return
        with open(lpath, "rb") as src:
            callback.set_size(os.fstat(src.fileno()).st_size)
            with self.open(rpath, "xb" if mode == "create" else "wb") as dst:
                while chunk := src.read(dst.chunk):
                    dst.write(chunk)
                    callback.relative_update(len(chunk))

    def cp_file(self, path1, path2, **kwargs):
        """Copy one file: inside one mount of a dataset the store copies it; across
        mounts or datasets it is read and written again. A directory makes one."""
        src = self._strip_protocol(path1)
        sds, _, srest = src.partition("/")
        dst, dds, drest = self._writable(path2)
        if self.isdir(src):
            self.makedirs(dst, exist_ok=True)
            return
        if sds == dds:
            try:
                self.client.cluster.master("copy", {"ds": dds, "p": srest, "to": drest})
                self.wrote(dst)
                return
            except NotSupported:
                pass                            # another mount: read it, write it
        with self.open(src, "rb") as fin, self.open(dst, "wb") as fout:
            while chunk := fin.read(fout.chunk):
                fout.write(chunk)

    # -- names ------------------------------------------------------------------------------
    def rm(self, path, recursive=False, maxdepth=None):
        """Remove files (and, with `recursive`, directories and all below them).

        Raises
        ------
        FileNotFoundError
            Nothing is at `path` (NotFound).
        PermissionError
            A read-only dataset, or a dataset's root (AccessDenied, InvalidRequest).
        """
        paths = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
        named = {self._strip_protocol(p) for p in (path if isinstance(path, list) else [path])}
        missing: list[str] = []
        by_ds: dict[str, list[str]] = {}
        for p in sorted(paths, reverse=True):          # what is below a directory first
            p, ds, rest = self._writable(p)
            by_ds.setdefault(ds, []).append(rest)
        for ds, rests in by_ds.items():
            page, size = [], 0
            for rest in rests + [None]:
                if rest is None or len(page) >= RM_PAGE or size + len(rest) > RM_PAGE_BYTES:
                    if page:
                        r = self.client.cluster.master("rm", {"ds": ds, "paths": page})
                        missing += [f"{ds}/{p}" for p in r.get("missing", ())]
                    page, size = [], 0
                if rest is not None:
                    page.append(rest)
                    size += len(rest)
            self.meta.invalidate(ds)
            self.meta.expire(ds)
        # (with `recursive`, a directory named may be gone with its files)
        gone = [] if recursive else [p for p in missing if p in named]
        if gone:
            raise NotFound(f"fluid://{gone[0]}: no such file or directory")

    def rm_file(self, path):
        """Remove one file (raises as `rm`)."""
        self.rm(path)

    _rm = rm_file

    def rmdir(self, path):
        """Remove an empty directory (local-file mounts; an object store has none)."""
        self.rm(path)

    def mkdir(self, path, create_parents=True, **kwargs):
        """Make a directory and those above it. An object store keeps no empty
        directories: there it shows once a file is written in it."""
        path, ds, rest = self._writable(path)
        if not rest:
            raise AlreadyExists(f"fluid://{ds} exists (a dataset)")
        self.client.cluster.master("mkdir", {"ds": ds, "p": rest})
        self.wrote(path)

    def makedirs(self, path, exist_ok=False):
        """As `mkdir`; FileExistsError if it is there already, unless `exist_ok`."""
        path, _, rest = self._writable(path)
        if self.exists(path):
            if not exist_ok:
                raise AlreadyExists(f"fluid://{path} exists")
            return
        self.mkdir(path)

    def sync(self, path, timeout: float | None = None) -> dict:
        """Wait until everything written under `path` is in the under store (up to
        `timeout` seconds; None: as long as it takes): {"pending": files not uploaded
        yet, "pending_bytes", "path", "write_mode"}. Only async-through keeps files
        waiting; through and cache-through finish each file at close, must-cache never
        uploads."""
        path = self._strip_protocol(path)
        ds, _, rest = path.partition("/")
        return wait_synced(self.client.cluster.master, {"ds": ds, "p": rest}, timeout)


SYNC_ASK = 10.0         # seconds one sync request waits at the master (its bound too)


def wait_synced(call, args: dict, timeout: float | None) -> dict:
    """Ask the master's `sync` (each request waits there, on its condition, up to
    SYNC_ASK seconds) until nothing is pending or `timeout` seconds have passed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = SYNC_ASK if deadline is None else max(0.0, deadline - time.monotonic())
        r = call("sync", dict(args, wait=min(SYNC_ASK, left)))
        if not r["pending"] or left <= 0:
            return r
