"""Versions of under-store files: what names one version's bytes, and its times.

A version is a short string; its first letter says what it rests on, so a reader knows
how to check bytes against it (readers.py):

    e:ETAG            an entity tag (S3, Azure, HTTP), quotes removed
    e:ETAG@ID         an object version of a versioned S3 bucket (read *by* that id)
    g:GENERATION      a GCS generation (a new one for every write, never reused)
    f:SIZE:MTIME_NS:INODE:CTIME_NS   a local file (ctime: a rewrite whose mtime was
                      put back, `touch -r`, `cp -p`, still changes it)
    m:SIZE:MTIME      another store's size and modification time
    w:SIZE:SCOPE      no validator at all (a reference or HTTP file without ETag or
                      Last-Modified): weak. SCOPE names one dataset incarnation and one
                      master run, so its blocks are never shared between datasets nor
                      kept across a restart of the master.

Not a store's version, never parsed as one (parse_version refuses it):

    c:HOLDER:ID       a file kept only on worker HOLDER (async-through before its upload,
                      must-cache): every read of it goes there (worker/pending.py)

A weak HTTP ETag (`W/"..."`) promises equivalent content, not the same bytes: it is not
used as a version.
Pure: no I/O, no clocks.
"""
from __future__ import annotations

import datetime
import math
from email.utils import parsedate_to_datetime
from typing import NamedTuple

KINDS = ("e", "g", "f", "m", "w")


class Version(NamedTuple):
    kind: str          # one of KINDS
    etag: str = ""     # e
    vid: str = ""      # e, a versioned bucket's object version
    value: str = ""    # g: the generation; f, m: the mtime; w: the scope
    size: int = -1     # f, m, w
    ino: int = -1      # f
    ctime: int = -1    # f


def norm_etag(raw) -> str | None:
    """An entity tag without quotes; None for none, or for a weak (`W/`) one."""
    if raw is None:
        return None
    text = str(raw).strip()
    if not text or text.upper().startswith("W/"):
        return None
    return text.strip('"') or None


def format_version(v: Version) -> str:
    if v.kind == "e":
        return f"e:{v.etag}@{v.vid}" if v.vid else f"e:{v.etag}"
    if v.kind == "g":
        return f"g:{v.value}"
    if v.kind == "f":
        return f"f:{v.size}:{v.value}:{v.ino}:{v.ctime}"
    return f"{v.kind}:{v.size}:{v.value}"


def parse_version(text: str) -> Version:
    """The parts of a version string; ValueError for one that is not ours."""
    if not isinstance(text, str) or len(text) < 3 or text[1] != ":" or text[0] not in KINDS:
        raise ValueError(f"not a version: {text!r:.80}")
    kind, body = text[0], text[2:]
    if kind == "e":
        etag, _, vid = body.partition("@")
        if not etag:
            raise ValueError("an entity-tag version needs a tag")
        return Version("e", etag=etag, vid=vid)
    if kind == "g":
        return Version("g", value=body)
    if kind == "f":
        size, mtime, ino, ctime = body.split(":")
        return Version("f", value=mtime, size=int(size), ino=int(ino), ctime=int(ctime))
    size, _, value = body.partition(":")
    return Version(kind, value=value, size=int(size))


def _seconds(value) -> float | None:
    """Seconds since the epoch from what stores return: datetimes, numbers, ISO or
    RFC 1123 strings. None when there is nothing usable."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) else None
    text = str(value).strip()
    try:
        return _seconds(datetime.datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        pass
    try:
        return _seconds(parsedate_to_datetime(text))
    except (TypeError, ValueError, IndexError):
        return None


def times(info: dict) -> tuple[float | None, float | None]:
    """(modified, created) of a file's under-store info, in seconds; None where the
    store does not say."""
    mtime = None
    for key in ("mtime", "LastModified", "last_modified", "updated", "Last-Modified"):
        mtime = _seconds(info.get(key))
        if mtime is not None:
            break
    created = None
    for key in ("created", "timeCreated", "creation_time"):
        created = _seconds(info.get(key))
        if created is not None:
            break
    return mtime, created


def version_of(info: dict, protocol: str, weak_scope: str) -> str:
    """The version of a file from its under-store info (a listing entry or a HEAD).
    `weak_scope` names the dataset incarnation and master run a weak version is
    bound to."""
    size = int(info.get("size") or 0)
    if protocol == "file" and info.get("mtime_ns") is not None:
        return format_version(Version("f", value=str(int(info["mtime_ns"])), size=size,
                                      ino=int(info.get("ino") or 0),
                                      ctime=int(info.get("ctime_ns") or 0)))
    generation = info.get("generation")
    if generation not in (None, ""):
        return format_version(Version("g", value=str(generation)))
    etag = norm_etag(info.get("ETag", info.get("etag")))
    if etag is not None and "@" not in etag:
        vid = info.get("VersionId")
        vid = "" if vid in (None, "", "null") else str(vid)
        return format_version(Version("e", etag=etag, vid=vid))
    mtime, _ = times(info)
    if mtime is not None:
        return format_version(Version("m", value=repr(mtime), size=size))
    return format_version(Version("w", value=weak_scope, size=size))


def cached_version(holder: str, fid: str) -> str:
    return f"c:{holder}:{fid}"


def parse_cached(version) -> tuple[str, str] | None:
    """(holder, id) of a kept file's version; None for any other version."""
    if not isinstance(version, str) or not version.startswith("c:"):
        return None
    holder, sep, fid = version[2:].partition(":")
    return (holder, fid) if sep and holder and fid.isalnum() else None


def is_weak(version: str) -> bool:
    return version.startswith("w:")


def weak_scope(dataset_uid: str, incarnation: str) -> str:
    """What a weak version is bound to: one dataset incarnation, one run of the master."""
    return f"{dataset_uid}.{incarnation}"


def scope_of(version: str) -> str | None:
    """The scope of a weak version (None for any other)."""
    return parse_version(version).value if is_weak(version) else None


def etag_field(version: str) -> str | None:
    """The `ETag` an fsspec info dict carries for this version (quoted, as S3 gives it),
    or None when the version is not an entity tag."""
    return f'"{version[2:].partition("@")[0]}"' if version.startswith("e:") else None
