"""Access to the under stores (S3, GCS, local files, any fsspec filesystem).

Owns: opening a mount's filesystem from its URL and options, the version of a file
(ETag, generation, or size+mtime), and conditional range reads that fail with
StaleVersion when the file changed since it was listed, so a block key (bound to the
version) never holds another version's bytes.
Lives on the master and the workers only: under-store credentials never reach clients.
Never: cache blocks or decide placement.
"""
from __future__ import annotations

import re
import threading

import fsspec
from fsspec.core import url_to_fs

from .errors import NotFound, AccessDenied, StaleVersion, UnderStoreError


class Mount:
    """One mount's filesystem and root path, opened lazily and at most once per process."""

    def __init__(self, url: str, options: dict | None = None) -> None:
        self.url, self.options = url, dict(options or {})
        self._fs = None
        self._root = ""
        self._lock = threading.Lock()

    def _open(self):
        with self._lock:
            if self._fs is None:
                try:
                    fs, root = url_to_fs(self.url, **self.options)
                except (ValueError, ImportError, TypeError) as exc:
                    raise UnderStoreError(f"cannot open {redact(self.url)}: {exc}") from None
                self._root = root.rstrip("/")
                self._fs = fs
        return self._fs

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._fs or self._open()

    @property
    def root(self) -> str:
        self.fs  # noqa: B018 - opens it
        return self._root

    def under_path(self, rel: str) -> str:
        """The under-store path of `rel` ('' is the mount root); `rel` is normalized."""
        return f"{self.root}/{rel}" if rel else self.root or "/"

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
        proto = self.fs.protocol
        proto = proto[0] if isinstance(proto, (tuple, list)) else proto
        return f"{proto}://{self.under_path(rel)}"

    def ls(self, rel: str) -> list[dict]:
        with translate(rel):
            return self.fs.ls(self.under_path(rel), detail=True, refresh=True)

    def info(self, rel: str) -> dict:
        with translate(rel):
            try:
                self.fs.invalidate_cache(self.under_path(rel))
            except Exception:  # noqa: BLE001 - best effort
                pass
            return self.fs.info(self.under_path(rel))

    def read_range(self, rel: str, version: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of the file if it still has `version`, else StaleVersion."""
        path = self.under_path(rel)
        with translate(rel):
            if self.fs.protocol in ("s3", ("s3", "s3a")) and hasattr(self.fs, "call_s3"):
                try:
                    return _s3_range(self.fs, path, version, start, end)
                except StaleVersion:
                    raise StaleVersion(f"{rel} changed in the under store; list it again") \
                        from None
            # no conditional read here: check the version before and after reading, so
            # bytes of a file rewritten meanwhile are never taken for the listed version
            for check in (0, 1):
                if check:
                    data = self.fs.cat_file(path, start=start, end=end)
                self.fs.invalidate_cache(path)
                if version_of(self.fs.info(path)) != version:
                    raise StaleVersion(f"{rel} changed in the under store; list it again")
            return data


def _s3_range(fs, path: str, etag: str, start: int, end: int) -> bytes:
    """One conditional GET: If-Match the listed ETag, so a changed object fails cleanly."""
    bucket, key, _ = fs.split_path(path)
    try:
        resp = fs.call_s3("get_object", Bucket=bucket, Key=key,
                          Range=f"bytes={start}-{end - 1}", IfMatch=etag)
    except OSError as exc:
        # s3fs turns S3's 412 PreconditionFailed into an OSError with S3's message
        text = str(exc)
        if "PreconditionFailed" in text or "412" in text or "pre-condition" in text:
            raise StaleVersion("the file changed in the under store; list it again") from None
        raise
    body = resp["Body"]
    try:
        return fsspec.asyn.sync(fs.loop, body.read)
    finally:
        body.close()


def version_of(info: dict) -> str:
    """A string that changes whenever the file's bytes may have changed."""
    for key in ("ETag", "etag", "generation", "md5Hash", "VersionId"):
        v = info.get(key)
        if v:
            return str(v)
    mtime = info.get("mtime", info.get("LastModified", info.get("last_modified",
                     info.get("updated", info.get("created", "")))))
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return f"{info.get('size', 0)}-{mtime}"


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
        if exc is None or isinstance(exc, (StaleVersion, NotFound, AccessDenied,
                                           UnderStoreError)):
            return False
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
