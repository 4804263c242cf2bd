"""End to end: a real local Ray cluster started by the CLI, a real S3 endpoint (moto) on
loopback; every byte read through fluid:// is compared with the bytes in the store."""
from __future__ import annotations

import pickle
import time

import pytest

from ..helpers import wait_for

pytestmark = pytest.mark.integration


def _ufs(client) -> int:
    return sum(w["stats"]["ufs_bytes_read"] for w in client.status()["workers"])


def _hits(client) -> int:
    return sum(w["stats"]["hits"] for w in client.status()["workers"])


def test_every_file_reads_byte_identical(fluid_fs, dataset_files, moto):
    s3 = moto.filesystem()
    for name, body in dataset_files.items():
        url = f"fluid://mixed/{name}"
        assert s3.cat_file(f"fc-test/ds/{name}") == body       # the store agrees
        assert fluid_fs.cat_file(url) == body, name
        with fluid_fs.open(url, "rb") as f:
            assert f.read() == body, name
        if len(body) > 10:
            for start, length in ((1, 7), (len(body) // 2, len(body)), (len(body) - 3, 10)):
                with fluid_fs.open(url, "rb") as f:
                    f.seek(start)
                    assert f.read(length) == body[start:start + length], (name, start)
            assert fluid_fs.cat_file(url, start=-5) == body[-5:]
            assert fluid_fs.cat_file(url, start=3, end=-2) == body[3:-2]


def test_reads_across_block_boundaries(fluid_fs, dataset_files):
    body = dataset_files["multi/big.bin"]
    mb = 1024 * 1024
    with fluid_fs.open("fluid://mixed/multi/big.bin") as f:
        for pos in (mb - 1, 2 * mb - 10, 3 * mb, len(body) - 1):
            f.seek(pos)
            assert f.read(20) == body[pos:pos + 20]
        f.seek(0)
        chunks = []
        while chunk := f.read(65536):          # small sequential reads, as parsers do
            chunks.append(chunk)
        assert b"".join(chunks) == body
        assert f.tell() == len(body)


def test_cat_ranges_and_multi_cat(fluid_fs, dataset_files):
    names = ["multi/big.bin", "images/img003.jpg", "one.bin", "multi/exact2.bin"]
    paths = [f"fluid://mixed/{n}" for n in names]
    starts = [1024 * 1024 - 100, 10, 0, 0]
    ends = [1024 * 1024 + 100, 5000, 1, 2 * 1024 * 1024]
    got = fluid_fs.cat_ranges(paths, starts, ends)
    assert got == [dataset_files[n][s:e] for n, s, e in zip(names, starts, ends)]
    both = fluid_fs.cat(paths[:2])
    assert both == {p.removeprefix("fluid://"): dataset_files[n]
                    for p, n in zip(paths[:2], names[:2])} or both == {
        p: dataset_files[n] for p, n in zip(paths[:2], names[:2])}


def test_listing_agrees_with_s3fs(fluid_fs, dataset_files, moto):
    s3 = moto.filesystem()
    for d in ("", "images", "multi", "deep/x", "tables"):
        ours = {e["name"].removeprefix("mixed").lstrip("/"): (e["type"], e["size"])
                for e in fluid_fs.ls(f"fluid://mixed/{d}", detail=True)}
        theirs = {e["name"].removeprefix("fc-test/ds").lstrip("/"): (e["type"], e["size"])
                  for e in s3.ls(f"fc-test/ds/{d}".rstrip("/"), detail=True, refresh=True)}
        assert ours == theirs, d
    found = sorted(p.removeprefix("mixed/") for p in fluid_fs.find("fluid://mixed"))
    assert found == sorted(dataset_files)
    info = fluid_fs.info("fluid://mixed/multi/big.bin")
    assert info["type"] == "file" and info["size"] == len(dataset_files["multi/big.bin"])
    assert fluid_fs.info("fluid://mixed/multi")["type"] == "directory"
    assert fluid_fs.isdir("fluid://mixed") and fluid_fs.exists("fluid://mixed/one.bin")
    assert not fluid_fs.exists("fluid://mixed/nope.bin")


def test_union_mounts(fluid_fs, dataset_files, local_extra):
    top = {e["name"]: e["type"] for e in fluid_fs.ls("fluid://union")}
    assert top["union/extra"] == "directory" and top["union/one.bin"] == "file"
    body = (local_extra / "notes" / "readme.md").read_bytes()
    assert fluid_fs.cat_file("fluid://union/extra/notes/readme.md") == body
    assert fluid_fs.cat_file("fluid://union/small/a.txt") == dataset_files["small/a.txt"]


def test_pandas_and_pyarrow(cluster, dataset_files):
    import fsspec
    import pandas as pd
    import pyarrow.parquet as pq

    df = pd.read_csv("fluid://mixed/tables/data.csv")
    assert len(df) == 2000 and df["value"].sum() == sum(i * 0.5 for i in range(2000))
    table = pq.read_table("mixed/tables/data.parquet", filesystem=fsspec.filesystem("fluid"),
                          columns=["id", "value"])
    assert table.num_rows == 2000 and table.column("id").to_pylist() == list(range(2000))
    with fsspec.open("fluid://mixed/small/a.txt", "rt") as f:
        assert f.read() == "hello fluid\n"


class _Files:
    """A map-style dataset that reads through whatever filesystem it was given."""

    def __init__(self, fs, names):
        self.fs, self.names = fs, names

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        return self.names[i], self.fs.cat_file(f"fluid://mixed/{self.names[i]}")


def test_dataloader_two_workers_two_epochs(fluid_fs, dataset_files):
    from torch.utils.data import DataLoader

    names = sorted(dataset_files)
    loader = DataLoader(_Files(fluid_fs, names), batch_size=4, num_workers=2,
                        collate_fn=lambda b: b)
    for _epoch in range(2):
        seen = {n: data for batch in loader for n, data in batch}
        assert seen.keys() == set(names)
        assert all(seen[n] == dataset_files[n] for n in names)


def test_filesystem_pickles(fluid_fs, dataset_files):
    fs2 = pickle.loads(pickle.dumps(fluid_fs))
    assert fs2.cat_file("fluid://mixed/small/a.txt") == dataset_files["small/a.txt"]


def test_warm_pass_reads_nothing_from_the_under_store(cluster, dataset_files):
    import fsspec
    client = cluster["client"]
    fs = fsspec.filesystem("fluid", skip_instance_cache=True)
    for name in dataset_files:                     # make sure everything is cached
        fs.cat_file(f"fluid://mixed/{name}")
    fs.client.flush()
    ufs, hits = _ufs(client), _hits(client)
    fs2 = fsspec.filesystem("fluid", skip_instance_cache=True)
    for name, body in dataset_files.items():
        assert fs2.cat_file(f"fluid://mixed/{name}") == body
    fs2.client.flush()                              # short-circuit hits are reported in batches
    assert _ufs(client) == ufs
    assert _hits(client) > hits


def test_remote_path_without_short_circuit(cluster, dataset_files):
    import fsspec
    fs = fsspec.filesystem("fluid", short_circuit=False, skip_instance_cache=True)
    for name in ("multi/big.bin", "images/img001.jpg", "one.bin"):
        assert fs.cat_file(f"fluid://mixed/{name}") == dataset_files[name]
    assert fs.client.counters["remote"] > 0 and fs.client.counters["short_circuit"] == 0


def test_bad_paths_raise_clear_errors(fluid_fs):
    with pytest.raises(FileNotFoundError, match="no dataset"):
        fluid_fs.cat_file("fluid://no-such-dataset/x")
    with pytest.raises(FileNotFoundError):
        fluid_fs.cat_file("fluid://mixed/no/such/file.bin")
    with pytest.raises(PermissionError):
        fluid_fs.cat_file("fluid://mixed/../other/secret")
    with pytest.raises(PermissionError):
        fluid_fs.ls("fluid://mixed/images/../../x")
    with pytest.raises(IsADirectoryError):
        fluid_fs.cat_file("fluid://mixed/images")
    with pytest.raises(PermissionError):
        fluid_fs.pipe_file("fluid://mixed/new.bin", b"x")


def test_wrong_token_is_refused(cluster):
    import fsspec
    fs = fsspec.filesystem("fluid", token="not-the-token", skip_instance_cache=True)
    with pytest.raises(PermissionError):
        fs.ls("fluid://mixed")


@pytest.mark.parametrize("args, needle", [
    (["ls", "fluid://no-such-dataset"], "no dataset"),
    (["ls", "fluid://mixed/../x"], "not allowed"),
    (["ls", "fluid://mixed/missing"], "no such file"),
    (["dataset", "show", "nope"], "no dataset"),
    (["dataset", "create", "bad", "--mount", "nope"], "bad mount"),
    (["start", "--mem", "12 parsecs"], "bad size"),
])
def test_cli_errors_are_one_line(cluster, cli, args, needle):
    p = cli(*args, check=False)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fluidcache: ") and needle in lines[0], p.stderr


def test_a_changed_object_is_listed_again_and_read_new(cluster, moto):
    import fsspec
    s3 = moto.filesystem()
    s3.pipe_file("fc-test/ds/changing/v.bin", b"version one")
    fs = fsspec.filesystem("fluid", skip_instance_cache=True)
    fs.client.cluster.master("metadata_load", {"ds": "mixed", "p": "changing"})
    assert fs.info("fluid://mixed/changing/v.bin")["size"] == len(b"version one")   # listed
    s3.pipe_file("fc-test/ds/changing/v.bin", b"version two, longer")            # changed
    # the block was never cached: the worker's conditional read sees the new ETag,
    # answers "stale", and the client lists again and reads the new bytes
    assert fs.cat_file("fluid://mixed/changing/v.bin") == b"version two, longer"
    assert fs.info("fluid://mixed/changing/v.bin")["size"] == len(b"version two, longer")


def test_large_directories_are_listed_in_pages(cluster, local_extra):
    import fsspec
    many = local_extra / "many"
    many.mkdir(exist_ok=True)
    for i in range(4500):
        (many / f"f{i:05d}").write_bytes(b"x" * (i % 7))
    fs = fsspec.filesystem("fluid", skip_instance_cache=True)
    entries = fs.ls("fluid://union/extra/many", detail=True)
    assert [e["name"] for e in entries] == [f"union/extra/many/f{i:05d}" for i in range(4500)]
    assert [e["size"] for e in entries] == [i % 7 for i in range(4500)]
    page = fs.client.cluster.master("ls", {"ds": "union", "p": "extra/many"})
    assert len(page["entries"]) == 2000 and page["next"] == "f01999"
    assert fs.cat_file("fluid://union/extra/many/f04499") == b"x" * (4499 % 7)


def test_sync_always_sees_new_files_at_once(cluster, local_extra):
    import fsspec
    live = local_extra.parent / "live"
    live.mkdir(exist_ok=True)
    (live / "a.txt").write_bytes(b"a")
    client = cluster["client"]
    client.create_dataset("live", {"/": f"file://{live}"}, sync="always")
    client.create_dataset("lazy", {"/": f"file://{live}"}, sync="never")
    fs = fsspec.filesystem("fluid", skip_instance_cache=True)
    assert fs.ls("fluid://live", detail=False) == ["live/a.txt"]
    assert fs.ls("fluid://lazy", detail=False) == ["lazy/a.txt"]
    (live / "b.txt").write_bytes(b"b")
    fs2 = fsspec.filesystem("fluid", skip_instance_cache=True)
    assert fs2.ls("fluid://live", detail=False) == ["live/a.txt", "live/b.txt"]
    assert fs2.ls("fluid://lazy", detail=False) == ["lazy/a.txt"]          # never re-listed
    assert client.load_metadata("fluid://lazy") == {"directories": 1, "files": 2}
    assert fs2.ls("fluid://lazy", detail=False, refresh=True) == ["lazy/a.txt", "lazy/b.txt"]
    assert client.dataset("live")["sync"] == "always"


def test_namespaces_are_isolated(cluster, moto, dataset_files):
    import fsspec
    import fluidcache
    from fluidcache.client.conn import Pool

    admin = cluster["client"]
    token = admin.create_namespace("team", allow=["s3://fc-test/ds/small"],
                                   endpoints=[moto.endpoint])
    assert "team" in admin.namespaces()
    team = fluidcache.connect(token=token, namespace="team")
    team.create_dataset("mixed", {"/": "s3://fc-test/ds/small"}, moto.options())  # same name
    with pytest.raises(PermissionError):
        team.create_namespace("sneaky")                  # only the admin namespace may
    with pytest.raises(PermissionError):                 # nor mount the nodes' own files
        team.create_dataset("etc", {"/": "file:///etc"})
    tfs = fsspec.filesystem("fluid", token=token, namespace="team", skip_instance_cache=True)
    assert tfs.ls("fluid://mixed", detail=False) == ["mixed/a.txt"]          # its own view
    assert tfs.cat_file("fluid://mixed/a.txt") == dataset_files["small/a.txt"]
    with pytest.raises(FileNotFoundError):
        tfs.cat_file("fluid://mixed/one.bin")            # default's file: not in team's mount
    assert [d["name"] for d in team.datasets()] == ["mixed"]
    assert "union" not in [d["name"] for d in team.datasets()]
    # the data server checks the token too: a read with the wrong one is refused
    entry = fsspec.filesystem("fluid", skip_instance_cache=True).info("fluid://mixed/one.bin")
    worker = admin.status()["workers"][0]["address"]
    args = {"ds": "mixed", "p": "one.bin", "v": entry["version"], "s": entry["size"], "b": 0}
    with pytest.raises(PermissionError):
        Pool().call(worker, "read", args, "default", token)          # team's token, default ns
    with pytest.raises(PermissionError):
        Pool().call(worker, "read", args, "team", None)
    _, data = Pool().call(worker, "read", args, "default", admin.endpoint.token)
    assert bytes(data) == dataset_files["one.bin"]


def test_readinto_fills_the_callers_buffer(fluid_fs, dataset_files):
    body = dataset_files["multi/big.bin"]
    for short_circuit in (True, False):
        import fsspec
        fs = fsspec.filesystem("fluid", short_circuit=short_circuit, skip_instance_cache=True)
        with fs.open("fluid://mixed/multi/big.bin") as f:
            buf = bytearray(len(body) + 100)
            assert f.readinto(buf) == len(body) and bytes(buf[:len(body)]) == body
            assert f.readinto(buf) == 0                       # at the end
            f.seek(1024 * 1024 - 7)
            small = bytearray(10)
            assert f.readinto(small) == 10 and bytes(small) == body[1024 * 1024 - 7:][:10]
            f.seek(5)
            big = memoryview(bytearray(2 * 1024 * 1024 + 3))
            assert f.readinto(big) == len(big) and big.tobytes() == body[5:5 + len(big)]
            assert f.tell() == 5 + len(big)


def test_reading_a_directory_costs_a_few_master_calls_not_one_per_file(cluster, dataset_files):
    import fsspec
    names = sorted(n for n in dataset_files if n.startswith("images/"))
    fs = fsspec.filesystem("fluid", skip_instance_cache=True)
    for n in names:
        assert fs.cat_file(f"fluid://mixed/{n}") == dataset_files[n]
    # two per-file infos, then one listing of the directory; the cluster map once
    assert fs.client.counters["master_calls"] <= 5 < len(names)
    before = fs.client.counters["master_calls"]
    for n in names:                                   # a second pass: no master call at all
        fs.cat_file(f"fluid://mixed/{n}")
    assert fs.client.counters["master_calls"] == before


def test_an_expired_listing_is_listed_again_not_asked_per_file(cluster, dataset_files):
    import fsspec
    names = sorted(n for n in dataset_files if n.startswith("images/"))
    fs = fsspec.filesystem("fluid", listing_ttl=1.0, skip_instance_cache=True)
    fs.ls("fluid://mixed/images")
    listed_at = fs.meta._lists["mixed/images"].expires
    wait_for(lambda: time.monotonic() > listed_at, what="the listing to expire")
    before = fs.client.counters["master_calls"]
    for n in names:
        assert fs.cat_file(f"fluid://mixed/{n}") == dataset_files[n]
    # two infos, one listing, maybe the dataset record: not one call per file
    assert fs.client.counters["master_calls"] - before <= 5 < len(names)


def test_sixteen_readers_of_a_cold_file_cause_one_fetch_per_block(cluster, moto):
    import threading

    import fsspec
    body = __import__("os").urandom(3 * 1024 * 1024 - 5)            # three 1 MiB blocks
    moto.filesystem().pipe_file("fc-test/ds/cold/shared.bin", body)
    client = cluster["client"]
    before = sum(w["stats"]["ufs_fetches"] for w in client.status()["workers"])
    fss = [fsspec.filesystem("fluid", short_circuit=False, skip_instance_cache=True)
           for _ in range(16)]
    for fs in fss:
        fs.info("fluid://mixed/cold/shared.bin")                     # metadata first
    start, results = threading.Barrier(16), [None] * 16

    def read(i):
        start.wait()
        results[i] = fss[i].cat_file("fluid://mixed/cold/shared.bin")

    threads = [threading.Thread(target=read, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r == body for r in results)
    after = sum(w["stats"]["ufs_fetches"] for w in client.status()["workers"])
    assert after - before == 3


def test_a_sequential_reader_reads_ahead_and_fetches_each_block_once(cluster, moto):
    import fsspec
    body = __import__("os").urandom(4 * 1024 * 1024 - 7)            # four 1 MiB blocks
    moto.filesystem().pipe_file("fc-test/ds/ahead/stream.bin", body)
    client = cluster["client"]
    before = sum(w["stats"]["ufs_fetches"] for w in client.status()["workers"])
    fs = fsspec.filesystem("fluid", readahead=2, skip_instance_cache=True)
    got = bytearray()
    with fs.open("fluid://mixed/ahead/stream.bin", "rb") as f:
        while chunk := f.read(256 * 1024):         # small reads, as a parser makes them
            got += chunk
    assert bytes(got) == body
    assert fs.client.counters["readahead"] >= 2    # blocks 2 and 3 were fetched ahead
    after = sum(w["stats"]["ufs_fetches"] for w in client.status()["workers"])
    assert after - before == 4                     # ahead or not, one fetch per block


def _all_workers_dead(fs, path: str) -> None:
    """Point this client's cluster map at a closed port for every worker."""
    import socket
    fs.info(path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    m = fs.client.cluster.map()
    fs.client.cluster._map = dict(m, workers=[dict(w, address=closed, serve=closed)
                                              for w in m["workers"]])


@pytest.mark.parametrize("own_options", [True, False])
def test_when_no_worker_answers_only_a_client_with_its_own_options_reads_the_store(
        cluster, moto, dataset_files, own_options):
    import fsspec
    path = "fluid://mixed/images/img003.jpg"
    extra = {"under_store_options": {"s3": moto.options()}} if own_options else {}
    fs = fsspec.filesystem("fluid", short_circuit=False, skip_instance_cache=True,
                           failover_timeout=30, **extra)
    _all_workers_dead(fs, path)
    assert fs.cat_file(path, 5, 70_000) == dataset_files["images/img003.jpg"][5:70_000]
    if own_options:      # straight to the store: no wait for the cluster
        assert fs.client.counters["direct"] == 1 and fs.client.counters["waits"] == 0
    else:                # waited for the cluster (a fresh map), then read through a worker
        assert fs.client.counters["direct"] == 0 and fs.client.counters["waits"] >= 1


def test_large_sequential_reads_hint_the_owners_to_fetch_ahead(cluster, moto):
    import fsspec
    body = __import__("os").urandom(8 * 1024 * 1024 + 11)           # nine 1 MiB blocks
    moto.filesystem().pipe_file("fc-test/ds/hint/big.bin", body)
    client = cluster["client"]
    before = sum(w["stats"]["prefetches"] for w in client.status()["workers"])
    fetches = sum(w["stats"]["ufs_fetches"] for w in client.status()["workers"])
    fs = fsspec.filesystem("fluid", short_circuit=False, skip_instance_cache=True)
    got = bytearray()
    with fs.open("fluid://mixed/hint/big.bin", "rb") as f:
        while chunk := f.read(2 * 1024 * 1024):                      # two blocks a read
            got += chunk
    assert bytes(got) == body
    assert fs.client.counters["prefetch"] >= 4
    st = client.status()["workers"]
    assert sum(w["stats"]["prefetches"] for w in st) - before >= 4
    assert sum(w["stats"]["ufs_fetches"] for w in st) - fetches == 9  # hinted or read: once
