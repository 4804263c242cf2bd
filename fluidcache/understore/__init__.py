"""Access to the under stores (S3, GCS, local files, any fsspec filesystem).

    mount.py     a mount's filesystem, listings and reads (the shell)
    readers.py   verified range reads: bytes of one version, or StaleVersion
    versions.py  what a version is, from what each store says (pure)
"""
from .mount import Mount, redact, translate
from .versions import etag_field, is_weak, parse_version, times, version_of

__all__ = ["Mount", "redact", "translate", "version_of", "parse_version", "times",
           "is_weak", "etag_field"]
