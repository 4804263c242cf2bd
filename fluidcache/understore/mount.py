"""One mount of a dataset: its under-store filesystem, listings, versions and reads.

Owns: opening a mount's filesystem from its URL and options (once per process), turning
under-store entries into entries with a version and times, and routing every range read
through the verified reader. A versioned S3 bucket is found when the mount is opened and
then listed with its object versions, so a listed version stays readable after an
overwrite. Local files are listed here (size, mtime_ns, inode: what their versions need).
Lives on the master and the workers only: under-store credentials never reach clients.
Never: cache blocks or decide placement.
"""
from __future__ import annotations

import os
import re
import stat
import threading

import fsspec
from fsspec.core import url_to_fs

from ..errors import (AccessDenied, AlreadyExists, FluidError, InvalidRequest, NotFound,
                      UnderStoreError)
from . import local
from .readers import Fetched, read_verified
from .s3list import ls_s3
from .versions import version_of


MAX_DIR_ENTRIES = 1_000_000


class Mount:
    """One mount's filesystem and root path, opened lazily and at most once per process.
    `max_entries`: the most entries one directory listing may hold (a larger one is
    refused with a clear error, never gathered whole into memory)."""

    def __init__(self, url: str, options: dict | None = None,
                 max_entries: int = MAX_DIR_ENTRIES) -> None:
        self.url, self.options = url, dict(options or {})
        self.max_entries = max_entries
        self._fs = None
        self._root = ""
        self.protocol = ""
        self.versioned = False      # an S3 bucket with versioning on: read by VersionId
        self.hints: dict = {}       # what the store was seen to do (readers.py)
        self._lock = threading.Lock()

    def _open(self):
        with self._lock:
            if self._fs is None:
                opts = dict(self.options)
                retries = opts.pop("store_retries", None)   # ours, not the store's
                try:
                    # a filesystem of our own: fsspec's instance cache would keep one
                    # per set of options forever (every tenant's random key, failed
                    # datasets too)
                    fs, root = url_to_fs(self.url, skip_instance_cache=True, **opts)
                    proto = fs.protocol
                    self.protocol = proto[0] if isinstance(proto, (tuple, list)) else proto
                    if isinstance(retries, int) and hasattr(fs, "retries"):
                        fs.retries = retries         # s3fs retries timeouts on its own
                    if self.protocol in ("s3", "s3a") and "version_aware" not in opts \
                            and _bucket_versioned(fs, root):
                        fs, root = url_to_fs(self.url, version_aware=True,
                                             skip_instance_cache=True, **opts)
                        if isinstance(retries, int) and hasattr(fs, "retries"):
                            fs.retries = retries
                    self.versioned = bool(getattr(fs, "version_aware", False))
                    cache = getattr(fs, "dircache", None)
                    if cache is not None:      # we keep our own listings, bounded
                        cache.use_listings_cache = False
                        cache.clear()
                except (ValueError, ImportError, TypeError) as exc:
                    raise UnderStoreError(f"cannot open {redact(self.url)}: {exc}") from None
                self._root = root.rstrip("/")
                self._fs = fs
        return self._fs

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._fs or self._open()

    @property
    def opened(self) -> bool:
        """Is the filesystem open (opening may ask the store: never on an event loop)?"""
        return self._fs is not None

    def open(self) -> "Mount":
        self.fs  # noqa: B018 - opens it
        return self

    @property
    def root(self) -> str:
        self.fs  # noqa: B018 - opens it
        return self._root

    def under_path(self, rel: str) -> str:
        """The under-store path of `rel` ('' is the mount root); `rel` is normalized. A
        local path is checked against what a local mount serves (local.py): a link that
        leads out is AccessDenied, one to a directory, dangling or looping, and a
        fluidcache mount inside, NotFound."""
        path = self._path(rel)
        if self.protocol == "file":
            local.check(self._path(""), rel, path)
        return path

    def remove_local_dir(self, under: str) -> None:
        """Remove a local directory that holds nothing served (local.py)."""
        local.remove_dir(under, self._path(""))

    def _path(self, rel: str) -> str:
        root = self.root
        if root:
            return f"{root}/{rel}" if rel else root
        marker = self.fs.root_marker          # '/' for local files, '' for most others
        return f"{marker}{rel}" if rel else marker

    def rel_of(self, under_name: str) -> str:
        name = under_name.rstrip("/")
        root = self.root
        if root and name.startswith(root + "/"):
            return name[len(root) + 1:]
        if not root:
            return name.lstrip("/")
        return name.rsplit("/", 1)[-1]

    def url_of(self, rel: str) -> str:
        """The identity of a file for block keys: protocol + under path."""
        self.fs  # noqa: B018 - opens it (sets the protocol)
        return f"{self.protocol}://{self._path(rel)}"

    def version_of(self, info: dict, weak_scope: str) -> str:
        return version_of(info, self.protocol, weak_scope)

    def ls(self, rel: str) -> list[dict]:
        """The entries of a directory (a file: itself), fresh from the store."""
        path = self.under_path(rel)        # opens the filesystem: the protocol is known
        with translate(rel):
            if self.protocol == "file":
                out = local.list_dir(path, self._path(""), _local_entry)
            elif hasattr(self.fs, "call_s3"):
                return ls_s3(self.fs, path, self.versioned, self.max_entries)
            else:
                out = self._ls_generic(path, rel)
            if len(out) > self.max_entries:
                raise InvalidRequest(f"{rel or '/'}: more than {self.max_entries} entries "
                                     "in one directory; mount a narrower path")
            return out

    def _ls_generic(self, path: str, rel: str) -> list[dict]:
        """Any other fsspec store's listing, made whole: a file some stores list as
        nothing (HTTP: a file is not a page of links) is asked for on its own, and an
        entry without a size (HTTP links) is asked for its size and validators."""
        out = self.fs.ls(path, detail=True, refresh=True)
        if not out and rel:
            info = self.fs.info(path)
            if info.get("type") != "directory":
                return [info]
        if len(out) > self.max_entries:
            return out
        return [self.fs.info(e["name"]) if e.get("type") != "directory" and
                e.get("size") is None else e for e in out]

    def info(self, rel: str) -> dict:
        path = self.under_path(rel)        # opens the filesystem: the protocol is known
        with translate(rel):
            if self.protocol == "file":
                return _local_entry(path, os.stat(path))
            try:
                self.fs.invalidate_cache(path)
            except Exception:  # noqa: BLE001 - best effort
                pass
            return self.fs.info(path)

    def read_range(self, rel: str, version: str, start: int, end: int,
                   size: int | None = None) -> Fetched:
        """Bytes [start, end) of the file if the store shows them to be `version`'s,
        else StaleVersion, and whether they may be cached (readers.py). `size`: the
        listed size, checked too."""
        path = self.under_path(rel)
        with translate(rel):
            return read_verified(self.fs, self.protocol, path, rel, version, start, end,
                                 size, self.hints)


def _bucket_versioned(fs, root: str) -> bool:
    """Does the bucket keep object versions? Asked once per mount; a store that does not
    answer (no permission, not implemented) is taken as unversioned."""
    bucket = root.strip("/").split("/", 1)[0]
    if not bucket or not hasattr(fs, "call_s3"):
        return False
    try:
        return fs.call_s3("get_bucket_versioning", Bucket=bucket).get("Status") == "Enabled"
    except Exception:  # noqa: BLE001 - any refusal means: read without version ids
        return False


def _local_entry(path: str, st: os.stat_result) -> dict:
    """A local file's entry. No `created`: Linux's stat has no birth time (st_ctime is
    the inode's last change)."""
    kind = "directory" if stat.S_ISDIR(st.st_mode) else "file"
    return {"name": path, "size": st.st_size if kind == "file" else 0, "type": kind,
            "mtime": st.st_mtime, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino,
            "ctime_ns": st.st_ctime_ns}


def redact(url: str) -> str:
    """A URL fit for messages: user info (`key:secret@`, where a secret may hold `/` or
    `@`) and the query string (signatures, tokens) removed."""
    proto, sep, rest = url.partition("://")
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    at = rest.rfind("@")
    if sep and at >= 0 and ":" in rest[:at]:
        rest = rest[at + 1:]
    return f"{proto}{sep}{rest}"


class translate:
    """Turn under-store exceptions into fluidcache errors that name the fluid path only."""

    def __init__(self, rel: str) -> None:
        self.where = rel or "/"

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, FluidError):     # ours already: as it is
            return False
        if isinstance(exc, FileExistsError):    # "xb" onto a file that is there
            raise AlreadyExists(f"{self.where} exists") from None
        if isinstance(exc, FileNotFoundError):
            raise NotFound(f"{self.where}: no such file or directory") from None
        if isinstance(exc, PermissionError):
            raise AccessDenied(f"{self.where}: the under store denied access") from None
        if isinstance(exc, Exception):   # botocore, aiohttp, ...: any failure of the store
            detail = _URL.sub("<under store>", str(exc))[:200]
            raise UnderStoreError(f"{self.where}: under store error: "
                                  f"{type(exc).__name__}: {detail}") from None
        return False


_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"']+")
