"""Shared fixtures: one moto S3 endpoint and one fluidcache cluster per test session.

The cluster is started the way a user starts it (`fluidcache start`, a real local Ray
instance with token auth on, as Ray 2.60 defaults: the token Ray writes under
~/.ray/auth_token is read by every driver of this user), in a temporary
FLUIDCACHE_HOME so it never meets a cluster the developer runs.
"""
from __future__ import annotations

import io
import os

import pytest

from fluidcache.testing.s3 import MotoServer

from .helpers import run_cli as _run_cli

BLOCK = 1024 * 1024   # small blocks, so small test files span several


@pytest.fixture(scope="session")
def moto(tmp_path_factory):
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with MotoServer(log_path=str(log)) as server:
        yield server


def _mixed_files() -> dict[str, bytes]:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    rnd = __import__("random").Random(42)
    files = {
        "empty.bin": b"",
        "one.bin": b"\x07",
        "small/a.txt": b"hello fluid\n",
        "multi/exact2.bin": rnd.randbytes(2 * BLOCK),
        "multi/big.bin": rnd.randbytes(3 * BLOCK + 12345),
        "deep/x/y/z.bin": rnd.randbytes(5000),
    }
    for i in range(12):
        files[f"images/img{i:03d}.jpg"] = rnd.randbytes(rnd.randint(90_000, 110_000))
    df = pd.DataFrame({"id": range(2000), "name": [f"n{i}" for i in range(2000)],
                       "value": [i * 0.5 for i in range(2000)]})
    files["tables/data.csv"] = df.to_csv(index=False).encode()
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df), buf, row_group_size=500)
    files["tables/data.parquet"] = buf.getvalue()
    return files


@pytest.fixture(scope="session")
def dataset_files(moto):
    """The mixed dataset, in bucket `fc-test` under prefix `ds/`."""
    s3 = moto.filesystem()
    s3.mkdir("fc-test")
    files = _mixed_files()
    s3.pipe({f"fc-test/ds/{k}": v for k, v in files.items()})
    return files


@pytest.fixture(scope="session")
def local_extra(tmp_path_factory):
    """A second under store, plain files, mounted at /extra."""
    root = tmp_path_factory.mktemp("extra")
    (root / "notes").mkdir()
    (root / "notes" / "readme.md").write_bytes(b"# extra mount\n" * 100)
    return root


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, moto, dataset_files, local_extra):
    """A running cluster (via the CLI) with dataset `mixed`: s3 at / and files at /extra."""
    home = tmp_path_factory.mktemp("fchome")
    mem = f"/dev/shm/fluidcache-test-{os.getpid()}" if os.path.isdir("/dev/shm") \
        else str(home / "mem")
    old = os.environ.get("FLUIDCACHE_HOME")
    os.environ["FLUIDCACHE_HOME"] = str(home)
    try:
        # the nodes' own (ambient) credentials, as a chart's Secret gives them: a tenant
        # may use them only where the admin grants it
        _run_cli("start", "--mem", "64MiB", "--mem-path", mem, "--ssd", f"{home}/ssd:256MiB",
                 "--block-size", "1MiB", "--no-dashboard",
                 env=dict(os.environ, AWS_ACCESS_KEY_ID="node-key",
                          AWS_SECRET_ACCESS_KEY="node-secret"))
        opts = [f"--option={k}={v}" for k, v in moto.options().items()]
        _run_cli("dataset", "create", "mixed", "--mount", "/=s3://fc-test/ds", *opts)
        import fluidcache
        client = fluidcache.connect()
        client.create_dataset("union", {"/": "s3://fc-test/ds", "/extra": f"file://{local_extra}"},
                              moto.options())
        yield {"home": home, "mem": mem, "client": client}
    finally:
        _run_cli("stop", check=False)
        import shutil
        shutil.rmtree(mem, ignore_errors=True)
        if old is None:
            os.environ.pop("FLUIDCACHE_HOME", None)
        else:
            os.environ["FLUIDCACHE_HOME"] = old


@pytest.fixture()
def fluid_fs(cluster):
    """A fresh fluid filesystem (no instance cache, no listing cache carried over)."""
    import fsspec
    return fsspec.filesystem("fluid", skip_instance_cache=True)


@pytest.fixture()
def cli():
    return _run_cli
