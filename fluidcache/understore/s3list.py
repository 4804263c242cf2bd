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


def ls_s3(fs, path: str, versioned: bool, max_entries: int) -> list[dict]:
    """Entries of `path` (bucket/prefix) as s3fs would give them (`name`, `size`,
    `type`, `ETag`, `LastModified`, `VersionId`); a key that is a file lists as itself;
    FileNotFoundError when there is neither."""
    bucket, key, _ = fs.split_path(path)
    key = key.rstrip("/")
    prefix = f"{key}/" if key else ""
    method, field = ("list_object_versions", "Versions") if versioned else \
        ("list_objects_v2", "Contents")
    kw = {"Bucket": bucket, "Prefix": prefix, "Delimiter": "/", "MaxKeys": 1000}
    out: list[dict] = []
    while True:
        page = fs.call_s3(method, **kw)
        for cp in page.get("CommonPrefixes") or ():
            out.append({"name": f"{bucket}/{cp['Prefix'].rstrip('/')}", "size": 0,
                        "type": "directory"})
        for c in page.get(field) or ():
            if (versioned and not c.get("IsLatest")) or c["Key"] == prefix:
                continue                    # older versions; a "directory" marker object
            out.append({"name": f"{bucket}/{c['Key']}", "size": c.get("Size", 0),
                        "type": "file", "ETag": c.get("ETag"),
                        "LastModified": c.get("LastModified"),
                        "VersionId": c.get("VersionId") if versioned else None})
        if len(out) > max_entries:
            raise InvalidRequest(f"{key or bucket}: more than {max_entries} entries in one "
                                 "directory; mount a narrower prefix (or raise "
                                 "max_dir_entries)")
        if not page.get("IsTruncated"):
            break
        if versioned:
            kw["KeyMarker"] = page.get("NextKeyMarker", "")
            kw["VersionIdMarker"] = page.get("NextVersionIdMarker", "")
        else:
            kw["ContinuationToken"] = page["NextContinuationToken"]
    if out or not key:
        return out
    head = fs.call_s3("head_object", Bucket=bucket, Key=key)    # a file, or NotFound
    return [{"name": f"{bucket}/{key}", "size": head.get("ContentLength", 0), "type": "file",
             "ETag": head.get("ETag"), "LastModified": head.get("LastModified"),
             "VersionId": head.get("VersionId") if versioned else None}]
