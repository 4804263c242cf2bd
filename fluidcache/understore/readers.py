"""Verified range reads: bytes of one version of a file, checked against that version
from what the store answered, or StaleVersion.

This is the one place a fill is checked, whoever asks for it (the data server, `load`,
readahead and prefetch, the client's direct fallback): a block key promises one
version's bytes, and nothing else may be cached under it.

    S3      GET with `If-Match` (and `VersionId` for a versioned bucket) as an
            optimisation only; the answer's own ETag, VersionId and Content-Range
            total must match. A store that ignores `If-Match` is caught here.
    HTTP    the same with the answer's ETag (or Last-Modified).
    file    `pread` between two `fstat`s of the same descriptor: size, mtime_ns and
            inode must be the listed ones before and after.
    others  the version from `info()` before and after the read (GCS generations and
            Azure ETags are never reused, so equal means unchanged); a weak version
            (no validator) can only be checked by its size.
Never: cache anything, or decide what a version is (versions.py).
"""
from __future__ import annotations

import os
import re

from fsspec.asyn import sync

from ..errors import StaleVersion
from .versions import Version, norm_etag, parse_version, times, version_of

_RANGE_TOTAL = re.compile(r"/\s*(\d+)\s*$")


def stale(rel: str, why: str) -> StaleVersion:
    return StaleVersion(f"{rel or '/'} changed in the under store ({why}); list it again")


def read_verified(fs, protocol: str, path: str, rel: str, version: str, start: int,
                  end: int, size: int | None) -> bytes:
    """Bytes [start, end) of `path` at `version` (`size`: the listed size, when known).
    Raises StaleVersion when the store holds another version, or answered with bytes
    it cannot show to be that version's."""
    try:
        v = parse_version(version)
    except ValueError:
        raise stale(rel, "unknown version format") from None
    if size is not None and v.size >= 0 and v.size != size:
        raise stale(rel, "the size does not match the version")
    want = max(0, (min(end, size) if size is not None else end) - start)
    if v.kind == "f" and protocol == "file":
        data = _read_local(path, rel, v, start, want)
    elif v.kind == "e" and hasattr(fs, "call_s3"):
        data = _read_s3(fs, path, rel, v, start, end, size)
    elif v.kind in ("e", "m") and protocol in ("http", "https"):
        data = _read_http(fs, path, rel, v, start, end)
    else:
        data = _read_checked(fs, protocol, path, rel, version, v, start, end)
    if size is not None and len(data) != want:
        raise stale(rel, f"{len(data)} bytes where {want} were asked")
    return data


# -- S3 ------------------------------------------------------------------------------------

def _read_s3(fs, path: str, rel: str, v: Version, start: int, end: int,
             size: int | None) -> bytes:
    bucket, key, _ = fs.split_path(path)
    kw = {"Bucket": bucket, "Key": key, "Range": f"bytes={start}-{end - 1}",
          "IfMatch": f'"{v.etag}"'}
    if v.vid:
        kw["VersionId"] = v.vid
    try:
        resp = fs.call_s3("get_object", **kw)
    except OSError as exc:
        # s3fs turns 412 PreconditionFailed into an OSError carrying S3's message; a
        # version deleted since it was listed is gone the same way
        text = str(exc)
        if any(s in text for s in ("PreconditionFailed", "412", "pre-condition",
                                   "NoSuchVersion", "InvalidArgument: Invalid version")):
            raise stale(rel, "the store refused the listed version") from None
        raise
    body = resp["Body"]
    try:
        got = norm_etag(resp.get("ETag"))
        if v.vid and resp.get("VersionId") not in (None, v.vid):
            raise stale(rel, "the store answered with another object version")
        if got is not None and got != v.etag:
            raise stale(rel, "the store answered with another ETag")
        total = _RANGE_TOTAL.search(resp.get("ContentRange") or "")
        if total and size is not None and int(total.group(1)) != size:
            raise stale(rel, "the object has another size")
        data = sync(fs.loop, body.read)
    finally:
        body.close()
    if got is None:       # no ETag in the answer (a proxy dropped it): ask once more
        head = fs.call_s3("head_object", Bucket=bucket, Key=key,
                          **({"VersionId": v.vid} if v.vid else {}))
        if norm_etag(head.get("ETag")) != v.etag:
            raise stale(rel, "the object's ETag changed")
    return data


# -- HTTP ----------------------------------------------------------------------------------

def _read_http(fs, url: str, rel: str, v: Version, start: int, end: int) -> bytes:
    async def get() -> bytes:
        session = await fs.set_session()
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if v.kind == "e":
            headers["If-Match"] = f'"{v.etag}"'
        kw = dict(fs.kwargs)
        kw["headers"] = {**kw.get("headers", {}), **headers}
        async with session.get(fs.encode_url(url), **kw) as r:
            if r.status == 412:
                raise stale(rel, "the server refused the listed ETag")
            if r.status == 404:
                raise FileNotFoundError(url)
            r.raise_for_status()
            if v.kind == "e":
                ok = norm_etag(r.headers.get("ETag")) == v.etag
            else:
                mtime, _ = times({"Last-Modified": r.headers.get("Last-Modified")})
                ok = mtime is not None and repr(mtime) == v.value
            if not ok:
                raise stale(rel, "the server answered with another version")
            data = await r.read()
            # a server that ignores Range sends the whole file: take the range from it
            return data[start:end] if r.status == 200 else data
    return sync(fs.loop, get)


# -- local files ---------------------------------------------------------------------------

def _local_version(st: os.stat_result) -> tuple[int, str, int]:
    return st.st_size, str(st.st_mtime_ns), st.st_ino


def _read_local(path: str, rel: str, v: Version, start: int, want: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        expect = (v.size, v.value, v.ino)
        if _local_version(os.fstat(fd)) != expect:
            raise stale(rel, "size, mtime or inode changed")
        parts, got = [], 0
        while got < want:
            chunk = os.pread(fd, want - got, start + got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        if _local_version(os.fstat(fd)) != expect:
            raise stale(rel, "written while it was read")
    finally:
        os.close(fd)
    return parts[0] if len(parts) == 1 else b"".join(parts)


# -- any other fsspec store -------------------------------------------------------------------

def _read_checked(fs, protocol: str, path: str, rel: str, version: str, v: Version,
                  start: int, end: int) -> bytes:
    """No validator in the answer: compare the version before and after the read."""
    def check() -> None:
        try:
            fs.invalidate_cache(path)
        except Exception:  # noqa: BLE001 - best effort; info() then asks the store
            pass
        info = fs.info(path)
        if v.kind == "w":
            ok = int(info.get("size") or 0) == v.size
        else:
            ok = version_of(info, protocol, "") == version
        if not ok:
            raise stale(rel, "its version changed")

    check()
    data = fs.cat_file(path, start=start, end=end)
    check()
    return data
