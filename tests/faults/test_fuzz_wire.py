"""Wire fuzzing against the real servers of a running cluster: the master endpoint, the
worker's data server and its serving processes get malformed, truncated, oversized and
wrongly-typed frames (hypothesis; FLUIDCACHE_FUZZ_CASES sets how many per target,
default 5,000: 15,000 in all). Each must answer with an error or close the connection;
after every case the servers still answer a well-formed request, and they never crash."""
from __future__ import annotations

import os
import socket
import struct

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fluidcache.client.conn import Pool, split_address

pytestmark = pytest.mark.integration
CASES = int(os.environ.get("FLUIDCACHE_FUZZ_CASES", "5000"))
COUNT = {"cases": 0}

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(),
                    st.text(max_size=40), st.binary(max_size=40))
values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) |
                      st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=12)
ops = st.sampled_from(["read", "touch", "ping", "ls", "info", "cluster", "status", "load",
                       "free", "prefetch", "dataset_create", "locate", "readv", "x" * 300,
                       ""])
headers = st.fixed_dictionaries(
    {}, optional={"op": st.one_of(ops, values), "a": st.one_of(
        st.fixed_dictionaries({}, optional={k: values for k in
                                            ("ds", "p", "v", "s", "b", "o", "l", "f", "bs",
                                             "keys", "paths", "job", "r")}), values),
        "i": st.one_of(st.integers(-5, 2**64), values), "n": values, "t": values,
        "d": st.one_of(st.integers(-1, 2**40), values)})


def _frame(header, tail: bytes) -> bytes:
    try:
        body = msgpack.packb(header, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        body = b"\xc1"
    return struct.pack(">I", len(body)) + body + tail


frames = st.one_of(
    st.builds(_frame, headers, st.binary(max_size=64)),                      # typed garbage
    st.builds(lambda h, cut: _frame(h, b"")[:cut], headers, st.integers(0, 40)),  # truncated
    st.builds(lambda n, b: struct.pack(">I", n) + b,                          # lengths
              st.sampled_from([0, 1, 2**20 + 1, 2**31, 2**32 - 1]), st.binary(max_size=64)),
    st.binary(max_size=200),                                                  # noise
)


def _send(address: str, data: bytes) -> None:
    host, port = split_address(address)
    with socket.create_connection((host, port), timeout=5) as c:
        c.settimeout(5)
        try:
            c.sendall(data)
            c.shutdown(socket.SHUT_WR)            # end of our input: answer or close now
            while c.recv(65536):                  # an error reply, then the close
                pass
        except (ConnectionError, socket.timeout, OSError):
            pass                                  # a reset is a close too


@pytest.fixture(scope="module")
def targets(cluster):
    st_ = cluster["client"].status()
    w = st_["workers"][0]
    return {"master": st_["master"]["address"], "worker": w["address"], "serve": w["serve"],
            "pids": {"master": st_["master"]["pid"], "worker": w["pid"],
                     "serve": w["serve_pids"][0]}, "serve_pids": w["serve_pids"]}


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.parametrize("target", ["master", "worker", "serve"])
def test_servers_survive_fuzzed_frames(cluster, targets, target):
    address = targets[target]
    pool = Pool(connect_timeout=5, request_timeout=10)
    endpoint = cluster["client"].endpoint
    pid = targets["pids"][target]
    rss_before = _rss(pid)

    @settings(max_examples=CASES, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(frames)
    def case(data):
        _send(address, data)
        COUNT["cases"] += 1
        if COUNT["cases"] % 50 == 0:             # still serving the well-formed
            assert pool.call(address, "ping", {}, endpoint.namespace, endpoint.token)[0]

    case()
    # after all of it: both servers answer and the data path still returns right bytes
    assert pool.call(targets["master"], "ping")[0]["pong"]
    assert pool.call(targets["worker"], "ping")[0]["pong"]
    assert pool.call(targets["serve"], "ping")[0]["pong"]
    fs = cluster["client"].filesystem(short_circuit=False, skip_instance_cache=True)
    body = fs.cat_file("fluid://mixed/images/img000.jpg")
    assert len(body) > 0
    alive = cluster["client"].status()["workers"]
    assert all(w["alive"] for w in alive)
    assert alive[0]["serve_pids"] == targets["serve_pids"]      # no serving process died
    grown = _rss(pid) - rss_before
    print(f"{target}: {CASES} fuzzed frames; worker protocol errors so far: "
          f"{alive[0]['stats'].get('protocol_errors')}; RSS grew {grown / 2**20:.1f} MiB")
    assert grown < 64 * 2**20            # frames over the limit are refused, not buffered
