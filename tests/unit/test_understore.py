"""Pure parts of the under-store layer: versions and redaction of URLs in messages."""
from __future__ import annotations

import pytest

from fluidcache.understore import redact, version_of


@pytest.mark.parametrize("url, shown", [
    ("s3://AKIA:abc/def@bucket/p", "s3://bucket/p"),        # a secret holding '/'
    ("s3://key:p@ss@bucket/p", "s3://bucket/p"),            # a secret holding '@'
    ("https://h/x?sig=abc&token=t", "https://h/x"),         # signed URLs
    ("s3://bucket/a@b/c", "s3://bucket/a@b/c"),             # '@' in a key is not userinfo
    ("file:///data/x", "file:///data/x"),
])
def test_redact(url, shown):
    assert redact(url) == shown


def test_version_prefers_etags_then_size_and_mtime():
    assert version_of({"ETag": '"abc"', "size": 3}) == '"abc"'
    assert version_of({"generation": 7}) == "7"
    assert version_of({"size": 3, "mtime": 12.5}) == "3-12.5"
    assert version_of({"size": 3, "mtime": 12.5}) != version_of({"size": 3, "mtime": 13.0})


def test_any_store_failure_becomes_an_under_store_error_without_urls():
    import pytest as _pytest

    from fluidcache.errors import UnderStoreError
    from fluidcache.understore import translate

    class EndpointConnectionError(Exception):        # like botocore's: not an OSError
        pass
    with _pytest.raises(UnderStoreError) as err:
        with translate("a/b.bin"):
            raise EndpointConnectionError(
                'Could not connect to "http://key:secret@10.0.0.1:9000/bucket/a/b.bin"')
    msg = str(err.value)
    assert msg.startswith("a/b.bin: under store error: EndpointConnectionError")
    assert "secret" not in msg and "10.0.0.1" not in msg and "<under store>" in msg
