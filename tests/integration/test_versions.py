"""The bytes are always right on every store: version-checked fills, one version per open
file, metadata refreshes that reach every client, and the fsspec metadata API.

Three stores: moto (honours If-Match), moto behind a proxy that strips conditional
headers, and s3rver (a second S3 implementation that keeps objects as files and ignores
If-Match). Plus a versioned bucket, where an open reader keeps reading its version.
"""
from __future__ import annotations

import errno
import os
import secrets

import pytest

from fluidcache.testing.proxy import LatencyProxy
from fluidcache.testing.s3 import S3rverServer, s3rver_script

from ..helpers import wait_for

pytestmark = pytest.mark.integration
BLOCK = 1024 * 1024
CONDITIONAL = ("If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since")


@pytest.fixture(scope="module")
def stores(cluster, moto, tmp_path_factory):
    """name -> (under-store endpoint, dataset): each dataset mounts bucket `fc-ver`."""
    if s3rver_script() is None:
        pytest.fail("s3rver is not installed: run .ci/run (it installs it into .ci/s3rver)")
    admin = cluster["client"]
    s3rver = S3rverServer(str(tmp_path_factory.mktemp("s3rver"))).__enter__()
    stripping = LatencyProxy(moto.endpoint, 0.0, strip=CONDITIONAL).__enter__()
    out = {}
    try:
        for name, store in (("moto", moto), ("stripped", stripping), ("s3rver", s3rver)):
            fs = store.filesystem()
            if name != "stripped":
                fs.mkdir("fc-ver")
            fs.pipe_file("fc-ver/ready", b"")
            ds = f"ver-{name}"
            admin.create_dataset(ds, {"/": "s3://fc-ver"}, store.options())
            out[name] = (store, ds)
        yield out
    finally:
        stripping.__exit__()
        s3rver.__exit__()


def stores_client(stores):
    import fluidcache
    return fluidcache.connect()


def _fs(**kw):
    import fsspec
    return fsspec.filesystem("fluid", skip_instance_cache=True, **kw)


@pytest.mark.parametrize("store", ["moto", "stripped", "s3rver"])
@pytest.mark.parametrize("new_size", [3 * BLOCK, 3 * BLOCK - 1000], ids=["same-size",
                                                                           "other-size"])
def test_an_overwrite_during_an_open_read_never_mixes_versions(stores, store, new_size):
    endpoint, ds = stores[store]
    s3 = endpoint.filesystem()
    name = f"ow-{secrets.token_hex(4)}/x.bin"     # a directory no listing holds yet
    old, new = os.urandom(3 * BLOCK), os.urandom(new_size)
    s3.pipe_file(f"fc-ver/{name}", old)
    url = f"fluid://{ds}/{name}"
    with _fs(readahead=0).open(url) as f:          # no readahead: blocks 1, 2 stay cold
        first = f.read(BLOCK)
        s3.pipe_file(f"fc-ver/{name}", new)
        with pytest.raises(OSError) as err:        # never the rest from the new version
            f.read()
    assert first == old[:BLOCK]
    assert err.value.errno == errno.ESTALE and "open it again" in str(err.value)
    assert _fs().cat_file(url) == new              # a new reader: listed again, new bytes
    s3.pipe_file(f"fc-ver/{name}", old)            # back to the old content (same ETag)
    stores_client(stores).load_metadata(url)
    for short_circuit in (True, False):            # nothing of `new` under old keys
        assert _fs(short_circuit=short_circuit).cat_file(url) == old
    assert _fs(short_circuit=False).cat_file(url, start=BLOCK, end=2 * BLOCK + 5) == \
        old[BLOCK:2 * BLOCK + 5]


def test_a_versioned_bucket_keeps_an_open_readers_version(cluster, moto):
    s3 = moto.filesystem()
    s3.mkdir("fc-versioned")
    s3.call_s3("put_bucket_versioning", Bucket="fc-versioned",
               VersioningConfiguration={"Status": "Enabled"})
    old, new = os.urandom(3 * BLOCK + 17), os.urandom(3 * BLOCK + 17)
    s3.pipe_file("fc-versioned/model.bin", old)
    cluster["client"].create_dataset("versioned", {"/": "s3://fc-versioned"}, moto.options())
    entry = _fs().info("fluid://versioned/model.bin")
    assert "@" in entry["version"]                 # listed with its object version
    with _fs(readahead=0).open("fluid://versioned/model.bin") as f:
        first = f.read(BLOCK)
        s3.pipe_file("fc-versioned/model.bin", new)
        assert first + f.read() == old             # read by version id: still the old one
    cluster["client"].load("fluid://versioned/model.bin", metadata_only=True)
    assert _fs().cat_file("fluid://versioned/model.bin") == new
    # a subdirectory whose only object is deleted (a delete marker) is gone after a
    # refresh: no phantom directory, no deleted bytes read by an old version id
    s3.pipe_file("fc-versioned/dir/sub/f.bin", b"deleted data")
    assert _fs().cat_file("fluid://versioned/dir/sub/f.bin") == b"deleted data"
    s3.rm_file("fc-versioned/dir/sub/f.bin")
    cluster["client"].load_metadata("fluid://versioned/dir")
    fresh = _fs()
    assert fresh.ls("fluid://versioned/dir", detail=False) == []
    with pytest.raises(FileNotFoundError):
        fresh.cat_file("fluid://versioned/dir/sub/f.bin")


def test_a_refreshed_file_reaches_fresh_and_running_clients(cluster, moto, cli):
    s3 = moto.filesystem()
    s3.pipe_file("fc-test/ds/fresh/f.bin", b"version one!")
    s3.pipe_file("fc-test/ds/fresh/g.bin", b"another file")
    running = _fs(metadata_check=0.5)
    assert running.cat_file("fluid://mixed/fresh/f.bin") == b"version one!"
    running.ls("fluid://mixed/fresh")                         # the listing is cached here
    s3.pipe_file("fc-test/ds/fresh/f.bin", b"version two!")   # same size
    cli("load", "fluid://mixed/fresh/f.bin", "--metadata-only")
    assert _fs().cat_file("fluid://mixed/fresh/f.bin") == b"version two!"
    assert {e["name"]: e["size"] for e in _fs().ls("fluid://mixed/fresh")} == \
        {"mixed/fresh/f.bin": 12, "mixed/fresh/g.bin": 12}
    wait_for(lambda: running.cat_file("fluid://mixed/fresh/f.bin") == b"version two!",
             timeout=10, what="the running client to see the refresh")
    # a directory refresh, and a file that went away
    s3.pipe_file("fc-test/ds/fresh/f.bin", b"version three, longer")
    s3.rm_file("fc-test/ds/fresh/g.bin")
    cluster["client"].load_metadata("fluid://mixed/fresh")
    fresh = _fs()
    assert fresh.cat_file("fluid://mixed/fresh/f.bin") == b"version three, longer"
    assert not fresh.exists("fluid://mixed/fresh/g.bin")
    wait_for(lambda: not running.exists("fluid://mixed/fresh/g.bin"), timeout=10,
             what="the running client to see the removal")


def test_the_fsspec_metadata_api(fluid_fs, moto, dataset_files):
    import datetime
    url = "fluid://mixed/tables/data.parquet"
    info = fluid_fs.info(url)
    s3info = moto.filesystem().info("fc-test/ds/tables/data.parquet")
    assert info["ETag"] == s3info["ETag"] and info["size"] == s3info["size"]
    assert fluid_fs.modified(url) == s3info["LastModified"].astimezone(datetime.timezone.utc)
    assert fluid_fs.ukey(url) == info["fid"] and isinstance(fluid_fs.checksum(url), int)
    assert fluid_fs.checksum(url) != fluid_fs.checksum("fluid://mixed/tables/data.csv")
    with pytest.raises(OSError) as err:            # S3 keeps no creation time
        fluid_fs.created(url)
    assert err.value.errno == errno.ENOTSUP
    local = "fluid://union/extra/notes/readme.md"    # Linux's stat keeps no birth time
    assert fluid_fs.modified(local).timestamp() == pytest.approx(fluid_fs.info(local)["mtime"])
    with pytest.raises(OSError):
        fluid_fs.created(local)


def test_duckdb_polars_and_pyarrow_datasets_read_through_fluid(fluid_fs):
    import duckdb
    import polars as pl
    import pyarrow.dataset as pads
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    url = "fluid://mixed/tables/data.parquet"
    con = duckdb.connect()
    con.register_filesystem(fluid_fs)
    assert con.sql(f"select count(*), sum(id) from read_parquet('{url}')").fetchall() == \
        [(2000, sum(range(2000)))]
    assert con.sql("select count(*) from read_csv('fluid://mixed/tables/data.csv')"
                   ).fetchall() == [(2000,)]
    with fluid_fs.open(url) as f:          # polars reads other filesystems' file objects
        df = pl.read_parquet(f)
    assert df.height == 2000 and df["id"].sum() == sum(range(2000))
    with fluid_fs.open("fluid://mixed/tables/data.csv") as f:
        assert pl.read_csv(f)["id"].to_list() == list(range(2000))
    table = pads.dataset("mixed/tables/data.parquet", format="parquet",
                         filesystem=PyFileSystem(FSSpecHandler(fluid_fs))).to_table()
    assert table.num_rows == 2000


def test_zarr_reads_an_array_through_fluid(cluster, moto, fluid_fs):
    import numpy as np
    import zarr
    from zarr.storage import FsspecStore

    data = np.arange(10_000, dtype="int32").reshape(100, 100)
    s3 = moto.filesystem()
    out = zarr.create_array(FsspecStore.from_url(
        "s3://fc-test/ds/arrays/a.zarr", storage_options=dict(
            key="testing", secret="testing", client_kwargs={"endpoint_url": moto.endpoint})),
        shape=data.shape, chunks=(25, 25), dtype="int32")
    out[:] = data
    assert s3.exists("fc-test/ds/arrays/a.zarr/zarr.json")
    # zarr wraps a synchronous fsspec filesystem itself
    got = zarr.open_array(FsspecStore.from_url("fluid://mixed/arrays/a.zarr", read_only=True))
    assert (got[:] == data).all()


def test_a_file_without_validators_is_never_served_to_another_dataset(cluster):
    admin = cluster["client"]

    def refs(byte):
        return {"fo": {"version": 1, "refs": {"d/a.bin": byte * 100}}}

    admin.create_dataset("weak-one", {"/": "reference://"}, refs("x"))
    one = _fs().info("fluid://weak-one/d/a.bin")
    assert one["version"].startswith("w:100:")              # no ETag, no mtime: weak
    assert _fs().cat_file("fluid://weak-one/d/a.bin") == b"x" * 100
    # same namespace, same under-store URL, same size, other bytes
    admin.create_dataset("weak-two", {"/": "reference://"}, refs("y"))
    assert _fs().cat_file("fluid://weak-two/d/a.bin") == b"y" * 100
    two = _fs().info("fluid://weak-two/d/a.bin")
    assert two["fid"] != one["fid"]
    # a client that reads ONE's path with TWO's weak version cannot plant ONE's bytes
    # under TWO's keys: the worker checks the weak version's scope
    from fluidcache.client.conn import Pool
    worker = admin.status()["workers"][0]["address"]
    args = {"ds": "weak-one", "p": "d/a.bin", "v": two["version"], "s": 100, "b": 0,
            "f": two["fid"]}
    with pytest.raises(OSError) as err:
        Pool().call(worker, "read", args, "default", admin.endpoint.token)
    assert err.value.errno == errno.ESTALE
    assert _fs().cat_file("fluid://weak-two/d/a.bin") == b"y" * 100
