"""Verified range reads: bytes of one version of a file, checked against that version
from what the store answered, or StaleVersion; and whether they may be cached.

This is the one place a fill is checked, whoever asks for it (the data server, `load`,
readahead and prefetch, the client's direct fallback): a block key promises one
version's bytes, and nothing else may be cached under it.

    S3      GET with `If-Match` (and `VersionId` for a versioned bucket) as an
            optimisation only; the answer's own ETag, VersionId and Content-Range
            total must match. A store that ignores `If-Match` is caught here. An
            answer with no ETag cannot be checked by itself: the range is read again
            between two HEADs that must agree (ETag and Last-Modified), served, and
            never cached.
    HTTP    the same with the answer's ETag (or Last-Modified).
    file    `pread` between two `fstat`s of the same descriptor: size, mtime_ns, inode
            and ctime_ns must be the listed ones before and after.
    others  the version from `info()` before and after the read (GCS generations and
            Azure ETags are never reused, so equal means unchanged); a weak version
            (no validator) can only be checked by its size.
Racy versions: a version resting on a modification time (local files, `m:`) is not
cached while that time is within RACY_SECONDS of now. A write in progress may already
carry its final mtime (Linux stamps it when the write starts) and a same-second,
same-size rewrite keeps a one-second Last-Modified: such bytes are served, not kept.
A file gone, or shorter than the range asked (416), is StaleVersion too: listed again,
it says what it is now.
Never: cache anything, or decide what a version is (versions.py).
"""
from __future__ import annotations

import os
import re
import time
from typing import NamedTuple

from fsspec.asyn import sync

from ..errors import StaleVersion
from .versions import Version, norm_etag, parse_version, times, version_of

_RANGE_TOTAL = re.compile(r"/\s*(\d+)\s*$")
RACY_SECONDS = 2.0
_REFUSED = ("PreconditionFailed", "412", "pre-condition", "NoSuchVersion",
            "specified version does not exist", "InvalidRange", "416",
            "range not satisfiable", "range is not satisfiable")
_NO_ETAG_HINT = 60.0     # seconds an S3 mount is read the no-ETag way after such an answer


class Fetched(NamedTuple):
    data: bytes
    cacheable: bool        # False: serve these bytes, but never keep them under the key


def stale(rel: str, why: str) -> StaleVersion:
    return StaleVersion(f"{rel or '/'} changed in the under store ({why}); list it again")


def _racy(mtime: float | None, now: float | None = None) -> bool:
    return mtime is not None and (now if now is not None else time.time()) - mtime < RACY_SECONDS


def read_verified(fs, protocol: str, path: str, rel: str, version: str, start: int,
                  end: int, size: int | None, hints: dict | None = None) -> Fetched:
    """Bytes [start, end) of `path` at `version` (`size`: the listed size, when known),
    and whether they may be cached. Raises StaleVersion when the store holds another
    version, or answered with bytes it cannot show to be that version's. `hints` is the
    mount's memory of what its store does (an S3 that sends no ETag)."""
    try:
        v = parse_version(version)
    except ValueError:
        raise stale(rel, "unknown version format") from None
    if size is not None and v.size >= 0 and v.size != size:
        raise stale(rel, "the size does not match the version")
    want = max(0, (min(end, size) if size is not None else end) - start)
    try:
        if v.kind == "f" and protocol == "file":
            got = _read_local(path, rel, v, start, want)
        elif v.kind == "e" and hasattr(fs, "call_s3"):
            got = _read_s3(fs, path, rel, v, start, end, size, hints if hints is not None
                           else {})
        elif v.kind in ("e", "m") and protocol in ("http", "https"):
            got = _read_http(fs, path, rel, v, start, end)
        else:
            got = _read_checked(fs, protocol, path, rel, version, v, start, end)
    except FileNotFoundError:
        raise stale(rel, "it is gone") from None
    if size is not None and len(got.data) != want:
        raise stale(rel, f"{len(got.data)} bytes where {want} were asked")
    return got


# -- S3 ------------------------------------------------------------------------------------

def _s3_refused(exc: BaseException) -> bool:
    """Did S3 refuse the listed version (412, a deleted version, 416 past the end)?
    s3fs words some of these its own way and keeps S3's in the cause."""
    texts = [str(exc), str(exc.__cause__ or "")]
    return any(s.lower() in t.lower() for s in _REFUSED for t in texts)


def _s3_get(fs, kw: dict, rel: str) -> tuple[dict, bytes]:
    try:
        resp = fs.call_s3("get_object", **kw)
    except OSError as exc:
        # s3fs turns 412 PreconditionFailed, a deleted version and a 416 (the object is
        # shorter now) into OSErrors carrying S3's message: the listed version is gone
        if _s3_refused(exc) or isinstance(exc, FileNotFoundError):
            raise stale(rel, "the store refused the listed version") from None
        raise
    body = resp["Body"]
    try:
        return resp, sync(fs.loop, body.read)
    finally:
        body.close()


def _read_s3(fs, path: str, rel: str, v: Version, start: int, end: int,
             size: int | None, hints: dict) -> Fetched:
    bucket, key, _ = fs.split_path(path)
    vid = {"VersionId": v.vid} if v.vid else {}
    kw = {"Bucket": bucket, "Key": key, "Range": f"bytes={start}-{end - 1}",
          "IfMatch": f'"{v.etag}"', **vid}
    if hints.get("no_etag", 0.0) < time.monotonic():
        resp, data = _s3_get(fs, kw, rel)
        got = norm_etag(resp.get("ETag"))
        if got is not None:
            if v.vid and resp.get("VersionId") not in (None, v.vid):
                raise stale(rel, "the store answered with another object version")
            if got != v.etag:
                raise stale(rel, "the store answered with another ETag")
            total = _RANGE_TOTAL.search(resp.get("ContentRange") or "")
            if total and size is not None and int(total.group(1)) != size:
                raise stale(rel, "the object has another size")
            return Fetched(data, True)
        # this store's answers carry no ETag (a proxy?): read the no-ETag way for a while
        hints["no_etag"] = time.monotonic() + _NO_ETAG_HINT
    # no ETag in the answer: nothing in it shows whose bytes these are. Read the range
    # between two HEADs that must agree; serve, never cache.
    def head() -> tuple:
        h = fs.call_s3("head_object", Bucket=bucket, Key=key, **vid)
        return norm_etag(h.get("ETag")), h.get("LastModified"), h.get("ContentLength")
    before = head()
    if before[0] != v.etag or (size is not None and before[2] not in (None, size)):
        raise stale(rel, "its ETag changed")
    if _racy(times({"LastModified": before[1]})[0]):
        # Last-Modified has one-second resolution: an overwrite and a revert within the
        # second would pass both HEADs. Refuse until the object is older than that.
        raise stale(rel, "the store sends no ETag and it changed in the last seconds")
    _, data = _s3_get(fs, kw, rel)
    if head() != before:
        raise stale(rel, "it changed while it was read")
    return Fetched(data, False)


# -- HTTP ----------------------------------------------------------------------------------

def _read_http(fs, url: str, rel: str, v: Version, start: int, end: int) -> Fetched:
    async def get() -> Fetched:
        session = await fs.set_session()
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if v.kind == "e":
            headers["If-Match"] = f'"{v.etag}"'
        kw = dict(fs.kwargs)
        kw["headers"] = {**kw.get("headers", {}), **headers}
        async with session.get(fs.encode_url(url), **kw) as r:
            if r.status == 412 or r.status == 416:
                raise stale(rel, "the server refused the listed version")
            if r.status == 404:
                raise FileNotFoundError(url)
            r.raise_for_status()
            mtime, _ = times({"Last-Modified": r.headers.get("Last-Modified")})
            if v.kind == "e":
                ok = norm_etag(r.headers.get("ETag")) == v.etag
            else:
                ok = mtime is not None and repr(mtime) == v.value
            if not ok:
                raise stale(rel, "the server answered with another version")
            data = await r.read()
            # a server that ignores Range sends the whole file: take the range from it
            data = data[start:end] if r.status == 200 else data
            return Fetched(data, v.kind == "e" or not _racy(mtime))
    return sync(fs.loop, get)


# -- local files ---------------------------------------------------------------------------

def local_version(st: os.stat_result) -> tuple[int, str, int, int]:
    return st.st_size, str(st.st_mtime_ns), st.st_ino, st.st_ctime_ns


def _read_local(path: str, rel: str, v: Version, start: int, want: int) -> Fetched:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        expect = (v.size, v.value, v.ino, v.ctime)
        st = os.fstat(fd)
        if local_version(st) != expect:
            raise stale(rel, "size, mtime, inode or ctime changed")
        parts, got = [], 0
        while got < want:
            chunk = os.pread(fd, want - got, start + got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        if local_version(os.fstat(fd)) != expect:
            raise stale(rel, "written while it was read")
    finally:
        os.close(fd)
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    return Fetched(data, not _racy(max(st.st_mtime_ns, st.st_ctime_ns) / 1e9))


# -- any other fsspec store -------------------------------------------------------------------

def _read_checked(fs, protocol: str, path: str, rel: str, version: str, v: Version,
                  start: int, end: int) -> Fetched:
    """No validator in the answer: compare the version before and after the read."""
    def check() -> dict:
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
        return info

    check()
    data = fs.cat_file(path, start=start, end=end)
    info = check()
    return Fetched(data, v.kind != "m" or not _racy(times(info)[0]))
