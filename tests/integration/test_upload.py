"""PartUpload (worker/upload.py) against moto's S3: parts in flight, in order, whole or
nothing, exclusive creation asked of the store."""
from __future__ import annotations

import random

import pytest

from fluidcache.errors import AlreadyExists
from fluidcache.worker.upload import MIN_PART, PartUpload

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3(moto):
    fs = moto.filesystem()
    fs.mkdir("fc-upload")
    return fs


def _uploads(s3) -> list:
    return s3.call_s3("list_multipart_uploads", Bucket="fc-upload").get("Uploads", [])


def test_parts_go_in_order_and_the_object_is_whole(s3):
    body = random.Random(1).randbytes(3 * MIN_PART + 12345)
    up = PartUpload(s3, "fc-upload/big.bin", MIN_PART, parallel=2)
    for i in range(0, len(body), 1_000_003):                 # pieces across part edges
        up.write(body[i:i + 1_000_003])
    assert up.upload_id is not None and len(up.parts) == 3   # sent while writing
    assert s3.exists("fc-upload/big.bin") is False           # nothing visible before commit
    up.commit()
    s3.invalidate_cache()
    assert s3.cat_file("fc-upload/big.bin") == body
    assert _uploads(s3) == []


@pytest.mark.parametrize("n", [0, 100, MIN_PART])
def test_a_file_of_at_most_one_part_is_one_put(s3, n):
    body = b"x" * n
    up = PartUpload(s3, f"fc-upload/one{n}.bin", MIN_PART)
    up.write(body)
    up.commit()
    assert up.upload_id is None or n == MIN_PART
    s3.invalidate_cache()
    assert s3.cat_file(f"fc-upload/one{n}.bin") == body


def test_an_abort_leaves_no_object_and_no_parts(s3):
    up = PartUpload(s3, "fc-upload/aborted.bin", MIN_PART, parallel=3)
    up.write(b"a" * (2 * MIN_PART + 1))
    assert up.upload_id is not None
    up.abort()
    s3.invalidate_cache()
    assert not s3.exists("fc-upload/aborted.bin")
    assert [u for u in _uploads(s3) if u["Key"] == "aborted.bin"] == []


def test_exclusive_creation_is_asked_of_the_store(s3):
    s3.pipe_file("fc-upload/taken.bin", b"first")
    for size in (10, 2 * MIN_PART):                          # the PUT, the completion
        up = PartUpload(s3, "fc-upload/taken.bin", MIN_PART, exclusive=True)
        up.write(b"z" * size)
        with pytest.raises(AlreadyExists):
            up.commit()
        up.abort()                                           # as the write room does
        s3.invalidate_cache()
        assert s3.cat_file("fc-upload/taken.bin") == b"first"
    assert [u for u in _uploads(s3) if u["Key"] == "taken.bin"] == []
