"""Tenants stay in their namespace: what a tenant sends (mounts, options, keys) is checked
as data before anything is opened or dialled, it mounts only what the admin granted with
credentials of its own, it cannot poison the journal, probe another namespace's cache, or
(as a Ray user without the worker secret) forge a worker."""
from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading

import msgpack
import pytest

import fluidcache
from fluidcache import wire
from fluidcache.blocks import block_key
from fluidcache.client.conn import Pool
from fluidcache.errors import FluidError

from ..helpers import run_cli

pytestmark = pytest.mark.integration
EXPLOIT = {"protocol": "reference", "remote_protocol": "file",
           "fo": {"version": 1, "refs": {"https://x/p": ["file:///etc/passwd", 0, 100]}}}


class Canary:
    """A loopback listener that counts who dials it (an SSRF target)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.dialled = 0
        self.stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.dialled += 1
                conn.close()
            except OSError:
                continue

    def close(self):
        self.stop.set()
        self.sock.close()


@pytest.fixture(scope="module")
def tenant(cluster, moto):
    admin = cluster["client"]
    name = f"sec{secrets.token_hex(3)}"
    token = admin.create_namespace(name, allow=["s3://fc-test/ds/small"],
                                   endpoints=[moto.endpoint])
    return {"admin": admin, "ns": name, "token": token,
            "client": fluidcache.connect(token=token, namespace=name)}


def test_the_reference_exploit_is_refused_and_nothing_is_read(tenant):
    with pytest.raises(PermissionError, match="option"):
        tenant["client"].create_dataset("evil", {"/": "https://x"}, EXPLOIT)
    env = dict(os.environ, FLUIDCACHE_TOKEN=tenant["token"], FLUIDCACHE_NAMESPACE=tenant["ns"])
    p = run_cli("dataset", "create", "evil", "--mount", "/=https://x",
                "--option=protocol=reference", "--option=remote_protocol=file",
                "--option=fo=" + json.dumps(EXPLOIT["fo"]), env=env, check=False)
    assert p.returncode == 1 and "not allowed" in p.stderr
    assert tenant["client"].datasets() == []


@pytest.mark.parametrize("url, options, why", [
    ("s3://fc-test/ds", {}, "not under a prefix"),                 # wider than granted
    ("s3://fc-test/ds/small/../multi", {}, "bad URL"),             # climbing out
    ("s3://fc-test/ds/small::file:///etc", {}, "bad URL"),         # a chained URL
    ("file:///etc", {}, "may not mount"),
    ("reference://", {"fo": {}}, "may not mount"),
    ("s3://fc-test/ds/small", {"client_kwargs": {"endpoint_url": "x"}}, "not allowed"),
    ("s3://fc-test/ds/small", {"key": "k"}, "own credentials"),    # no secret: the nodes'
    ("s3://fc-test/ds/small", {}, "own credentials"),
    # stores whose options reach the network or the nodes' identity in ways not vetted
    # (a service account's token_uri, an account name that becomes a host, credentials
    # from the nodes' environment): the admin mounts them, tenants do not
    ("gs://fc-test/ds/small", {"token": {"token_uri": "http://127.0.0.1:1/"}}, "may not mount"),
    ("abfs://c/x", {"account_name": "127.0.0.1:1/x?", "anon": True}, "may not mount"),
])
def test_a_tenant_mounts_only_what_was_granted(tenant, moto, url, options, why):
    opts = dict({"endpoint_url": moto.endpoint} if url.startswith("s3") and
                "client_kwargs" not in options else {}, **options)
    with pytest.raises(PermissionError, match=why):
        tenant["client"].create_dataset(f"t{secrets.token_hex(3)}", {"/": url}, opts)


def test_no_endpoint_is_dialled_before_it_is_refused(tenant):
    canary = Canary()
    try:
        for opts in ({"endpoint_url": f"http://127.0.0.1:{canary.port}", "key": "k",
                      "secret": "s"},
                     {"protocol": "reference", "fo": {"version": 1, "refs": {
                         "p": [f"http://127.0.0.1:{canary.port}/x", 0, 10]}}}):
            with pytest.raises(PermissionError):
                tenant["client"].create_dataset("ssrf", {"/": "s3://fc-test/ds/small"}, opts)
        with pytest.raises(PermissionError):
            tenant["client"].create_dataset("ssrf", {"/": f"https://127.0.0.1:{canary.port}/x"},
                                            {})
    finally:
        canary.close()
    assert canary.dialled == 0


def test_node_credentials_only_where_granted(cluster, moto):
    admin = cluster["client"]
    name = f"nodecred{secrets.token_hex(3)}"
    token = admin.create_namespace(name, allow=["s3://fc-test/ds/small"],
                                   endpoints=[moto.endpoint], node_credentials=True)
    team = fluidcache.connect(token=token, namespace=name)
    team.create_dataset("mine", {"/": "s3://fc-test/ds/small"}, {"endpoint_url": moto.endpoint})
    assert admin.namespace(name)["grant"]["node_credentials"] is True
    with pytest.raises(PermissionError):
        team.grant(name, allow=["s3://fc-test"])                       # only the admin grants


def test_options_that_cannot_be_journaled_are_refused_over_the_wire(tenant, cluster):
    """Non-string map keys used to pass the wire and stop the next replay (and truncate
    the journal after them); now they are refused at the boundary."""
    master = cluster["client"].endpoint.master
    for ns, token in (("default", cluster["client"].endpoint.token),
                      (tenant["ns"], tenant["token"])):
        host, port = master.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as c:
            body = msgpack.packb({"i": 1, "op": "dataset_create", "ns": ns, "tk": token,
                                  "a": {"name": "poison", "mounts": [["/", "s3://fc-test/ds/small"]],
                                        "options": {1: 0}}}, use_bin_type=True)
            c.sendall(len(body).to_bytes(4, "big") + body)
            reply, _ = wire.recv_reply(c)
        assert not reply.ok and reply.error["code"] in ("invalid", "access_denied"), reply
    assert "poison" not in [d["name"] for d in cluster["client"].datasets()]


def test_touch_counts_only_the_callers_own_blocks(tenant, cluster, dataset_files):
    import fsspec
    admin_fs = fsspec.filesystem("fluid", skip_instance_cache=True)
    admin_fs.cat_file("fluid://mixed/one.bin")                         # cached now
    entry = admin_fs.info("fluid://mixed/one.bin")
    key = block_key(entry["fid"], 0, admin_fs.client.cluster.map()["block_size"])
    status = cluster["client"].status()
    held = []
    for w in status["workers"]:
        got, _ = Pool().call(w["address"], "touch", {"keys": [key]}, tenant["ns"],
                             tenant["token"])
        held.append(got["held"])
    assert held == [0] * len(held)                                     # nothing to learn
    for hint in ("soon", "later"):      # nor to keep or push out of another's cache
        got = [Pool().call(w["address"], "touch", {"keys": [key], "hint": hint},
                           tenant["ns"], tenant["token"])[0]["held"]
               for w in status["workers"]]
        assert got == [0] * len(got)
    mine = [Pool().call(w["address"], "touch", {"keys": [key]}, "default",
                        cluster["client"].endpoint.token)[0]["held"] for w in status["workers"]]
    assert sum(mine) >= 1
    hinted = [Pool().call(w["address"], "touch", {"keys": [key], "hint": "soon"}, "default",
                          cluster["client"].endpoint.token)[0]["held"]
              for w in status["workers"]]
    assert sum(hinted) >= 1
    with pytest.raises(FluidError, match="hint"):
        Pool().call(status["workers"][0]["address"], "touch",
                    {"keys": [key], "hint": "never"}, "default",
                    cluster["client"].endpoint.token)


_FORGE = """
import json, fluidcache
from fluidcache import names
fluidcache.init_ray(namespace=names.RAY_NAMESPACE, log_to_driver=False)
import ray
m = ray.get_actor(names.MASTER_ACTOR, namespace=names.RAY_NAMESPACE)
out = {}
for what, call in (("heartbeat", lambda: m.heartbeat.remote(
                        {"id": "x", "node_id": "x", "address": "127.0.0.1:1"}, None, "guess")),
                   ("tokens", lambda: m.tokens.remote()),
                   ("dataset", lambda: m.dataset_for_worker.remote("default", "mixed")),
                   ("rules", lambda: m.rules_for_worker.remote(""))):
    try:
        ray.get(call(), timeout=30)
        out[what] = "answered"
    except Exception as exc:
        out[what] = "refused" if "workers only" in str(exc) else repr(exc)[:200]
print(json.dumps(out))
"""


def test_a_ray_user_without_the_worker_secret_cannot_act_as_a_worker(cluster):
    env = dict(os.environ, FLUIDCACHE_HOME=str(cluster["home"]), RAY_AUTH_MODE="token")
    p = subprocess.run([sys.executable, "-c", _FORGE], env=env, capture_output=True,
                       text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == {
        "heartbeat": "refused", "tokens": "refused", "dataset": "refused", "rules": "refused"}
    st = cluster["client"].status()
    assert "127.0.0.1:1" not in [w.get("address") for w in st["workers"]]


def test_an_https_mount_sends_no_header_but_authorization(cluster):
    admin = cluster["client"]
    name = f"web{secrets.token_hex(3)}"
    token = admin.create_namespace(name, allow=["https://127.0.0.1:9/pub"])
    team = fluidcache.connect(token=token, namespace=name)
    with pytest.raises(PermissionError, match="Authorization"):
        team.create_dataset("vhost", {"/": "https://127.0.0.1:9/pub"},
                            {"headers": {"Host": "admin.internal"}})


def test_failed_creates_with_new_options_do_not_grow_the_master(cluster, moto, tenant):
    """Seen: every distinct set of options kept a filesystem in fsspec's instance cache
    (~13 MiB each), refused datasets too."""
    def rss() -> int:
        pid = cluster["client"].status()["master"]["pid"]
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    before = rss()
    for i in range(40):
        with pytest.raises(OSError):
            tenant["client"].create_dataset(
                f"gone{i}", {"/": "s3://fc-test/ds/small/no-such-dir"},
                {"endpoint_url": moto.endpoint, "key": secrets.token_hex(8),
                 "secret": secrets.token_hex(8)})
    grown = (rss() - before) / 1024
    assert grown < 120, f"the master grew {grown:.0f} MiB over 40 refused datasets"
