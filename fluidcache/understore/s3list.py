"""Listing an S3 prefix page by page, with a bound on how much it may hold.

s3fs's `ls` gathers a whole prefix into memory (and keeps it in its listings cache); a
prefix of ten million objects would then sit in the master. Here pages of at most 1,000
keys are turned into compact entries as they come, and a directory over `max_entries`
is refused with a clear error instead. A versioned bucket is listed with its object
versions (the latest of each key; keys whose latest is a delete marker are gone).
Never: cache anything.
"""
from __future__ import annotations

from ..errors import InvalidRequest


def _walk(fs, method: str, kw: dict, max_entries: int, key: str):
    """The pages of one listing call, bounded."""
    kw, seen = dict(kw), 0
    while True:
        page = fs.call_s3(method, **kw)
        seen += len(page.get("CommonPrefixes") or ()) + len(page.get("Versions") or ()) + \
            len(page.get("Contents") or ())
        if seen > 2 * max_entries:       # versions listings carry old versions too
            raise InvalidRequest(f"{key or kw['Bucket']}: more than {max_entries} entries "
                                 "in one directory; mount a narrower prefix (or raise "
                                 "max_dir_entries)")
        yield page
        if not page.get("IsTruncated"):
            return
        if method == "list_object_versions":
            kw["KeyMarker"] = page.get("NextKeyMarker", "")
            kw["VersionIdMarker"] = page.get("NextVersionIdMarker", "")
        else:
            kw["ContinuationToken"] = page["NextContinuationToken"]


def ls_s3(fs, path: str, versioned: bool, max_entries: int) -> list[dict]:
    """Entries of `path` (bucket/prefix) as s3fs would give them (`name`, `size`,
    `type`, `ETag`, `LastModified`, `VersionId`); a key that is a file lists as itself;
    FileNotFoundError when there is neither. In a versioned bucket the directories come
    from the plain listing (a prefix holding only delete markers is no directory) and the
    files from the versions listing (each key's latest version, with its id)."""
    bucket, key, _ = fs.split_path(path)
    key = key.rstrip("/")
    prefix = f"{key}/" if key else ""
    kw = {"Bucket": bucket, "Prefix": prefix, "Delimiter": "/", "MaxKeys": 1000}
    out: list[dict] = []
    for page in _walk(fs, "list_objects_v2", kw, max_entries, key):
        for cp in page.get("CommonPrefixes") or ():
            out.append({"name": f"{bucket}/{cp['Prefix'].rstrip('/')}", "size": 0,
                        "type": "directory"})
        for c in () if versioned else page.get("Contents") or ():
            if c["Key"] != prefix:           # a "directory" marker object is no file
                out.append({"name": f"{bucket}/{c['Key']}", "size": c.get("Size", 0),
                            "type": "file", "ETag": c.get("ETag"),
                            "LastModified": c.get("LastModified"), "VersionId": None})
    if versioned:
        for page in _walk(fs, "list_object_versions", kw, max_entries, key):
            for c in page.get("Versions") or ():
                if c.get("IsLatest") and c["Key"] != prefix:
                    out.append({"name": f"{bucket}/{c['Key']}", "size": c.get("Size", 0),
                                "type": "file", "ETag": c.get("ETag"),
                                "LastModified": c.get("LastModified"),
                                "VersionId": c.get("VersionId")})
    if len(out) > max_entries:
        raise InvalidRequest(f"{key or bucket}: more than {max_entries} entries in one "
                             "directory; mount a narrower prefix (or raise max_dir_entries)")
    if out or not key:
        return out
    head = fs.call_s3("head_object", Bucket=bucket, Key=key)    # a file, or NotFound
    return [{"name": f"{bucket}/{key}", "size": head.get("ContentLength", 0), "type": "file",
             "ETag": head.get("ETag"), "LastModified": head.get("LastModified"),
             "VersionId": head.get("VersionId") if versioned else None}]
