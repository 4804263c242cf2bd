"""The under-store layer without a cluster: versions, verified reads against stores that
answer wrongly (fakes), local files changed under a reader, and redaction."""
from __future__ import annotations

import pytest

from fluidcache.understore import redact, times, version_of
from fluidcache.understore.versions import format_version, parse_version


@pytest.mark.parametrize("url, shown", [
    ("s3://AKIA:abc/def@bucket/p", "s3://bucket/p"),        # a secret holding '/'
    ("s3://key:p@ss@bucket/p", "s3://bucket/p"),            # a secret holding '@'
    ("https://h/x?sig=abc&token=t", "https://h/x"),         # signed URLs
    ("s3://bucket/a@b/c", "s3://bucket/a@b/c"),             # '@' in a key is not userinfo
    ("file:///data/x", "file:///data/x"),
])
def test_redact(url, shown):
    assert redact(url) == shown


def test_versions_say_what_they_rest_on():
    assert version_of({"ETag": '"abc"', "size": 3}, "s3", "x") == "e:abc"
    assert version_of({"ETag": "abc", "size": 3}, "s3", "x") == "e:abc"    # unquoted alike
    assert version_of({"ETag": '"abc"', "VersionId": "v7"}, "s3", "x") == "e:abc@v7"
    assert version_of({"ETag": '"abc"', "VersionId": "null"}, "s3", "x") == "e:abc"
    assert version_of({"generation": 7, "etag": "CJ"}, "gcs", "x") == "g:7"
    assert version_of({"size": 3, "mtime": 12.5}, "sftp", "x") == "m:3:12.5"
    assert version_of({"size": 3, "mtime_ns": 5, "ino": 9, "ctime_ns": 6, "mtime": 0.0},
                      "file", "x") == "f:3:5:9:6"
    # a weak ETag promises equivalent content, not the same bytes: not a version
    assert version_of({"ETag": 'W/"abc"', "size": 3,
                       "Last-Modified": "Tue, 01 Dec 2026 03:00:00 GMT"}, "https", "x") \
        == "m:3:" + repr(1796094000.0)
    # no validator at all: weak, bound to the scope (dataset incarnation, master run)
    assert version_of({"size": 100}, "reference", "ds1.run1") == "w:100:ds1.run1"
    assert version_of({"size": 100}, "reference", "ds2.run1") != \
        version_of({"size": 100}, "reference", "ds1.run1")
    for v in ("e:abc", "e:abc@v7", "g:7", "m:3:12.5", "f:3:5:9:6", "w:100:s"):
        assert format_version(parse_version(v)) == v
    for bad in ("", "abc", "x:1", "e:", '"abc"'):
        with pytest.raises(ValueError):
            parse_version(bad)


def test_times_from_what_stores_return():
    import datetime
    dt = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    assert times({"LastModified": dt}) == (dt.timestamp(), None)
    assert times({"mtime": 12.5, "created": 10.0}) == (12.5, 10.0)
    assert times({"updated": "2026-01-02T03:04:05Z", "timeCreated": "2026-01-02T03:04:05Z"}) \
        == (dt.timestamp(), dt.timestamp())
    assert times({"Last-Modified": "Fri, 02 Jan 2026 03:04:05 GMT"}) == (dt.timestamp(), None)
    assert times({"size": 1}) == (None, None)


class _Body:
    def __init__(self, data):
        self.data = data

    async def read(self):
        return self.data

    def close(self):
        pass


class FakeS3:
    """An S3 that ignores If-Match (as s3rver and some proxies do): it answers with the
    object it holds now, with that object's ETag, or none when `drop_etag`."""

    def __init__(self, data: bytes, etag: str, drop_etag: bool = False):
        import asyncio
        self.data, self.etag, self.drop_etag = data, etag, drop_etag
        self.modified, self.script = 1, []
        self.loop = asyncio.new_event_loop()
        import threading
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.calls = []

    def split_path(self, path):
        b, _, k = path.partition("/")
        return b, k, None

    def call_s3(self, op, **kw):
        self.calls.append((op, kw))
        if self.script:                      # a scripted change before this call
            self.data, self.etag, self.modified = self.script.pop(0)
        if op == "head_object":
            return {"ETag": f'"{self.etag}"', "ContentLength": len(self.data),
                    "LastModified": self.modified}
        start, end = (int(x) for x in kw["Range"][6:].split("-"))
        if start >= len(self.data):
            raise OSError("InvalidRange: The requested range is not satisfiable")
        out = {"Body": _Body(self.data[start:end + 1]),
               "ContentRange": f"bytes {start}-{end}/{len(self.data)}"}
        if not self.drop_etag:
            out["ETag"] = f'"{self.etag}"'
        return out


def test_a_store_that_ignores_if_match_is_caught_by_the_answers_etag():
    from fluidcache.errors import StaleVersion
    from fluidcache.understore.readers import read_verified
    fs = FakeS3(b"new bytes!", "new")
    with pytest.raises(StaleVersion):
        read_verified(fs, "s3", "b/k", "k", "e:old", 0, 4, 10)
    assert fs.calls[0][1]["IfMatch"] == '"old"'          # asked for, not relied on
    assert read_verified(fs, "s3", "b/k", "k", "e:new", 0, 4, 10) == (b"new ", True)


def test_an_answer_of_another_size_or_shorter_than_asked_is_stale():
    from fluidcache.errors import StaleVersion
    from fluidcache.understore.readers import read_verified
    fs = FakeS3(b"0123456789", "same")
    with pytest.raises(StaleVersion):                    # listed at 12 bytes, now 10
        read_verified(fs, "s3", "b/k", "k", "e:same", 0, 4, 12)
    with pytest.raises(StaleVersion):                    # shrunk past the range: 416
        read_verified(fs, "s3", "b/k", "k", "e:same", 11, 12, 12)

    def s3fs_416(op, **kw):                              # as s3fs words a 416
        try:
            raise RuntimeError("An error occurred (InvalidRange) when calling GetObject")
        except RuntimeError as cause:
            raise OSError(22, "The requested range is not satisfiable") from cause
    fs.call_s3 = s3fs_416
    with pytest.raises(StaleVersion):
        read_verified(fs, "s3", "b/k", "k", "e:same", 11, 12, 12)


def test_an_answer_without_an_etag_is_served_between_two_heads_and_never_cached():
    """A store (or proxy) that sends no ETag and ignores If-Match: an overwrite and a
    revert during the read must not get the new bytes cached under the old key."""
    from fluidcache.errors import StaleVersion
    from fluidcache.understore.readers import read_verified
    fs = FakeS3(b"1111111111", "v1", drop_etag=True)
    hints = {}
    got = read_verified(fs, "s3", "b/k", "k", "e:v1", 0, 4, 10, hints)
    assert got == (b"1111", False) and hints["no_etag"] > 0
    assert [c[0] for c in fs.calls] == ["get_object", "head_object", "get_object",
                                       "head_object"]
    # overwritten with v2 before the GET, put back to v1 (same ETag) before the HEAD
    fs = FakeS3(b"1111111111", "v1", drop_etag=True)
    fs.script = [(b"1111111111", "v1", 1), (b"2222222222", "v2", 2),
                 (b"1111111111", "v1", 3)]
    with pytest.raises(StaleVersion):
        read_verified(fs, "s3", "b/k", "k", "e:v1", 0, 4, 10, {"no_etag": float("inf")})
    # overwritten and put back within the second of the listed write: Last-Modified
    # cannot tell; an object changed in the last seconds is refused, not served
    import datetime
    now = datetime.datetime.now(datetime.timezone.utc)
    fs = FakeS3(b"1111111111", "v1", drop_etag=True)
    fs.modified = now
    fs.script = [(b"1111111111", "v1", now), (b"2222222222", "v2", now),
                 (b"1111111111", "v1", now)]
    with pytest.raises(StaleVersion, match="last seconds"):
        read_verified(fs, "s3", "b/k", "k", "e:v1", 0, 4, 10, {"no_etag": float("inf")})


def test_a_versioned_read_asks_for_the_version_and_a_vanished_one_is_stale():
    from fluidcache.errors import StaleVersion
    from fluidcache.understore.readers import read_verified
    fs = FakeS3(b"0123456789", "t")
    real = fs.call_s3
    fs.call_s3 = lambda op, **kw: dict(real(op, **kw), VersionId="other")
    with pytest.raises(StaleVersion):
        read_verified(fs, "s3", "b/k", "k", "e:t@mine", 0, 4, 10)
    assert fs.calls[-1][1]["VersionId"] == "mine"

    def gone(op, **kw):
        raise FileNotFoundError("The specified version does not exist.")
    fs.call_s3 = gone
    with pytest.raises(StaleVersion):                    # listed again, not ENOENT
        read_verified(fs, "s3", "b/k", "k", "e:t@mine", 0, 4, 10)


def test_a_local_file_changed_or_replaced_is_stale(tmp_path):
    import os

    from fluidcache.errors import StaleVersion
    from fluidcache.understore import Mount
    (tmp_path / "f.bin").write_bytes(b"a" * 100)
    m = Mount(f"file://{tmp_path}")
    v = m.version_of(m.info("f.bin"), "s")
    assert v.startswith("f:100:")
    assert m.read_range("f.bin", v, 10, 20, 100).data == b"a" * 10
    (tmp_path / "f.bin").write_bytes(b"b" * 100)          # same size, rewritten
    with pytest.raises(StaleVersion):
        m.read_range("f.bin", v, 10, 20, 100)
    v2 = m.version_of(m.info("f.bin"), "s")
    st = os.stat(tmp_path / "f.bin")
    with open(tmp_path / "f.bin", "r+b") as f:           # rewritten in place ...
        f.write(b"d" * 100)
    os.utime(tmp_path / "f.bin", ns=(st.st_atime_ns, st.st_mtime_ns))   # ... mtime put back
    with pytest.raises(StaleVersion):                    # the ctime still moved
        m.read_range("f.bin", v2, 0, 10, 100)
    v2 = m.version_of(m.info("f.bin"), "s")
    (tmp_path / "g.bin").write_bytes(b"c" * 100)
    st = os.stat(tmp_path / "f.bin")
    os.utime(tmp_path / "g.bin", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp_path / "g.bin", tmp_path / "f.bin")   # same size and mtime, new inode
    with pytest.raises(StaleVersion):
        m.read_range("f.bin", v2, 0, 10, 100)
    assert [e["name"].rsplit("/", 1)[-1] for e in m.ls("")] == ["f.bin"]


def test_a_weak_version_is_checked_by_its_size_only(tmp_path):
    from fluidcache.errors import StaleVersion
    from fluidcache.understore.readers import read_verified
    import fsspec
    (tmp_path / "w.bin").write_bytes(b"x" * 50)
    fs = fsspec.filesystem("file")
    assert read_verified(fs, "memoryish", str(tmp_path / "w.bin"), "w.bin", "w:50:s",
                         0, 5, 50).data == b"xxxxx"
    with pytest.raises(StaleVersion):
        read_verified(fs, "memoryish", str(tmp_path / "w.bin"), "w.bin", "w:60:s", 0, 5, 60)


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


def test_a_file_written_just_now_is_served_but_not_cached(tmp_path):
    """A write in progress may already carry its final mtime: bytes read within the
    racy window are never kept under the version's key."""
    import os

    from fluidcache.understore import Mount
    (tmp_path / "f.bin").write_bytes(b"a" * 100)
    m = Mount(f"file://{tmp_path}")
    v = m.version_of(m.info("f.bin"), "s")
    assert m.read_range("f.bin", v, 0, 10, 100) == (b"a" * 10, False)     # just written
    lib = Mount(f"file://{os.path.dirname(os.__file__)}")    # a file written long ago
    size = os.stat(os.__file__).st_size
    v = lib.version_of(lib.info("os.py"), "s")
    assert lib.read_range("os.py", v, 0, 10, size).cacheable is True


def test_a_local_mount_serves_and_writes_nothing_a_symbolic_link_leads_out_to(tmp_path):
    import os

    from fluidcache.errors import AccessDenied, NotFound
    from fluidcache.understore import Mount
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    (root / "b").mkdir()
    outside.mkdir()
    (root / "a.bin").write_bytes(b"a" * 10)
    (root / "b" / "keep").write_bytes(b"k")
    (outside / "secret").write_bytes(b"s" * 10)
    os.symlink(root / "a.bin", root / "in")              # a link to a file within: served
    os.symlink("../a.bin", root / "sub" / "rel_in")      # relative, within: served
    os.symlink(outside / "secret", root / "out")         # a file outside
    os.symlink(outside, root / "sub" / "outdir")         # a directory outside
    os.symlink("../b", root / "sub" / "tob")             # a directory within: not served
    os.symlink(".", root / "sub" / "loop")               # a loop through an ancestor
    os.symlink(root / "self", root / "self")             # a loop onto itself
    os.symlink(tmp_path / "gone", root / "dangling")
    m = Mount(f"file://{root}")
    assert sorted(e["name"].rsplit("/", 1)[-1] for e in m.ls("")) == \
        ["a.bin", "b", "in", "sub"]
    assert [e["name"].rsplit("/", 1)[-1] for e in m.ls("sub")] == ["rel_in"]
    for rel in ("in", "sub/rel_in"):
        v = m.version_of(m.info(rel), "s")
        assert m.read_range(rel, v, 0, 10, 10).data == b"a" * 10
    for rel in ("out", "sub/outdir", "sub/outdir/secret", "sub/outdir/new"):
        with pytest.raises(AccessDenied, match="outside the mount"):
            m.under_path(rel)                            # every read, list and write
        with pytest.raises(AccessDenied):
            m.info(rel)
    for rel in ("sub/tob", "sub/tob/keep", "sub/tob/new", "sub/loop", "sub/loop/sub"):
        with pytest.raises(NotFound, match="directory is not served"):
            m.under_path(rel)
    with pytest.raises(AccessDenied):
        m.ls("sub/outdir")
    with pytest.raises(NotFound):
        m.ls("sub/tob")
    assert m.under_path("sub/new.bin") == str(root / "sub" / "new.bin")   # a new file


def test_a_local_mount_whose_root_is_a_link_follows_it_when_it_is_repointed(tmp_path):
    import os

    from fluidcache.understore import Mount
    for v in ("v1", "v2"):
        (tmp_path / v).mkdir()
        (tmp_path / v / "f.bin").write_bytes(v.encode() * 5)
    os.symlink(tmp_path / "v1", tmp_path / "current")
    m = Mount(f"file://{tmp_path / 'current'}")
    assert m.info("f.bin")["size"] == 10
    assert [e["name"].rsplit("/", 1)[-1] for e in m.ls("")] == ["f.bin"]
    os.symlink(tmp_path / "v2", tmp_path / "next")
    os.replace(tmp_path / "next", tmp_path / "current")   # ln -sfn v2 current
    v = m.version_of(m.info("f.bin"), "s")
    assert m.read_range("f.bin", v, 0, 10, 10).data == b"v2" * 5
    assert [e["name"].rsplit("/", 1)[-1] for e in m.ls("")] == ["f.bin"]


def test_a_local_mount_never_looks_into_a_fluidcache_mount_however_it_is_reached(
        tmp_path, monkeypatch):
    import os

    from fluidcache.errors import NotFound
    from fluidcache.understore import Mount, local
    v1 = tmp_path / "v1"
    (v1 / "mnt").mkdir(parents=True)
    (v1 / "mnt" / "a.bin").write_bytes(b"m")
    (v1 / "f.bin").write_bytes(b"f")
    os.symlink(v1 / "mnt" / "a.bin", v1 / "into_mnt")     # a link into the mount
    os.symlink(v1, tmp_path / "current")
    monkeypatch.setattr(local, "fluid_mountpoints", lambda: frozenset({str(v1 / "mnt")}))
    real_lstat, touched = os.lstat, []

    def lstat(p, *a, **k):                                   # nothing stat'ed inside
        touched.append(str(p))
        return real_lstat(p, *a, **k)
    monkeypatch.setattr(local.os, "lstat", lstat)
    for url in (f"file://{v1}", f"file://{tmp_path}/current", f"file://{tmp_path}//v1",
                f"file://{tmp_path}/./v1/"):
        m = Mount(url)
        assert [e["name"].rsplit("/", 1)[-1] for e in m.ls("")] == ["f.bin"], url
        for rel in ("mnt", "mnt/a.bin", "into_mnt"):
            with pytest.raises(NotFound):
                m.under_path(rel)
    assert not [p for p in touched if p.startswith(str(v1 / "mnt"))]


def test_local_links_that_loop_or_dangle_are_not_served_and_a_root_moved_is_followed(
        tmp_path):
    import os

    from fluidcache.errors import IsADirectory, NotFound
    from fluidcache.understore import Mount
    v1 = tmp_path / "v1"
    (v1 / "d").mkdir(parents=True)
    (v1 / "data.bin").write_bytes(b"D" * 10)
    os.symlink(v1 / "self", v1 / "self")
    os.symlink("y", v1 / "x")
    os.symlink("x", v1 / "y")
    os.symlink("gone.bin", v1 / "dang_in")
    os.symlink(v1, tmp_path / "current")
    m = Mount(f"file://{tmp_path / 'current'}")
    assert sorted(e["name"].rsplit("/", 1)[-1] for e in m.ls("")) == ["d", "data.bin"]
    for rel in ("self", "self/z", "x", "x/z", "dang_in"):
        with pytest.raises(NotFound, match="dangles, loops"):
            m.under_path(rel)
    # a directory holding a served link to a file is not empty: nothing goes
    os.symlink("../data.bin", v1 / "d" / "alias.bin")
    (v1 / "d" / "sub").mkdir()
    with pytest.raises(IsADirectory):
        m.remove_local_dir(m.under_path("d"))
    assert os.path.islink(v1 / "d" / "alias.bin")
    os.rmdir(v1 / "d" / "sub")
    with pytest.raises(IsADirectory):                    # the served link alone, too
        m.remove_local_dir(m.under_path("d"))
    assert os.path.islink(v1 / "d" / "alias.bin")
    # one holding only links that are not served is empty to its readers: they go
    os.unlink(v1 / "d" / "alias.bin")
    os.symlink(tmp_path, v1 / "d" / "out")
    os.symlink(".", v1 / "d" / "loop")
    m.remove_local_dir(m.under_path("d"))
    assert not os.path.lexists(v1 / "d") and (v1 / "data.bin").read_bytes() == b"D" * 10
    # the root's target moved and the link re-pointed (the same inode behind it)
    os.rename(v1, tmp_path / "v1-renamed")
    os.symlink(tmp_path / "v1-renamed", tmp_path / "next")
    os.replace(tmp_path / "next", tmp_path / "current")
    assert m.info("data.bin")["size"] == 10
