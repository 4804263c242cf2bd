"""Isolation between namespaces, at the master and at the data server: no listing or
read of another namespace's data, no fetch of a URL outside a mount (`..`, `//`,
encoded, absolute), and no credential in status, errors or logs."""
from __future__ import annotations

import glob
import json
import os
import secrets

import pytest

import fluidcache
from fluidcache.client.conn import Pool
from fluidcache.errors import FluidError

pytestmark = pytest.mark.integration
ESCAPES = ["../ds/one.bin", "a/../../one.bin", "/etc/passwd", "//fc-test/ds/one.bin",
           "%2e%2e/one.bin", "..%2fone.bin", "images/../../../etc/passwd", "\x00", "..",
           "images/%2E%2E/%2E%2E/x"]


@pytest.fixture(scope="module")
def two(cluster, moto):
    admin = cluster["client"]
    token = admin.create_namespace(f"iso{secrets.token_hex(3)}", allow=["s3://fc-test/ds/small"],
                                   endpoints=[moto.endpoint])
    ns = [n for n in admin.namespaces() if n.startswith("iso")][-1]
    team = fluidcache.connect(token=token, namespace=ns)
    secret = "s3cr3t-" + secrets.token_hex(8)      # a credential we can look for later
    team.create_dataset("own", {"/": "s3://fc-test/ds/small"},
                        dict(moto.options(), secret=secret))
    return {"admin": admin, "team": team, "ns": ns, "token": token, "secret": secret}


def test_a_namespace_cannot_list_or_read_anothers_data(two, dataset_files):
    import fsspec
    tfs = fsspec.filesystem("fluid", token=two["token"], namespace=two["ns"],
                            skip_instance_cache=True)
    assert [d["name"] for d in two["team"].datasets()] == ["own"]
    for url in ("fluid://mixed", "fluid://mixed/one.bin", "fluid://union/extra"):
        with pytest.raises(FileNotFoundError):
            tfs.ls(url) if url.count("/") == 2 else tfs.cat_file(url)
    for verb in ("du", "free", "pin", "load"):
        with pytest.raises(FileNotFoundError):
            getattr(two["team"], verb)("fluid://mixed")
    # straight to the data server with the team's own token, naming default's dataset
    entry = fsspec.filesystem("fluid", skip_instance_cache=True).info("fluid://mixed/one.bin")
    worker = two["admin"].status()["workers"][0]["address"]
    args = {"ds": "mixed", "p": "one.bin", "v": entry["version"], "s": entry["size"], "b": 0,
            "f": entry["fid"]}
    with pytest.raises(FileNotFoundError):
        Pool().call(worker, "read", args, two["ns"], two["token"])
    with pytest.raises(PermissionError):                      # a token of another namespace
        Pool().call(worker, "read", args, "default", two["token"])


@pytest.mark.parametrize("path", ESCAPES)
def test_no_path_escapes_a_mount(two, path):
    worker = two["admin"].status()["workers"][0]["address"]
    master = two["admin"].endpoint.master
    args = {"ds": "own", "p": path, "v": "x", "s": 10, "b": 0}
    with pytest.raises(FluidError) as err:
        Pool().call(worker, "read", args, two["ns"], two["token"])
    assert err.value.code in ("invalid", "not_found", "stale", "access_denied"), err.value
    with pytest.raises(FluidError) as err:
        Pool().call(master, "ls", {"ds": "own", "p": path}, two["ns"], two["token"])
    assert err.value.code in ("invalid", "not_found", "access_denied"), err.value


def test_no_credential_in_status_errors_or_logs(two, cluster):
    import fsspec
    secret = two["secret"]
    tfs = fsspec.filesystem("fluid", token=two["token"], namespace=two["ns"],
                            skip_instance_cache=True)
    tfs.cat_file("fluid://own/a.txt")                         # the secret was used
    errors = []
    for url in ("fluid://own/missing.txt", "fluid://own/../x", "fluid://nope/x"):
        try:
            tfs.cat_file(url)
        except OSError as exc:
            errors.append(str(exc))
    assert len(errors) == 3 and not any(secret in e for e in errors)
    assert secret not in json.dumps(two["team"].status())
    assert secret not in json.dumps(two["team"].dataset("own"))
    logs = [p for p in glob.glob("/tmp/ray/session_*/logs/*") if os.path.isfile(p)]
    assert logs
    for p in logs:
        with open(p, "rb") as f:
            assert secret.encode() not in f.read(), p
