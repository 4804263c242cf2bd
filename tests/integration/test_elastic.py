"""Elasticity on a multi-node Ray cluster (ray.cluster_utils.Cluster): a node that joins
gets its share of the cached blocks from their previous holders, a drained node hands its
blocks on before it goes, and a node killed without a drain loses nothing that had a
replica. Each pass reads the whole ~40 MiB dataset and checks every byte; what it read
from the store is counted by the workers (<= 2%), and the last pass runs with the store
switched off (0%: any read that reached it would fail)."""
from __future__ import annotations

import os

import pytest

from fluidcache.testing.proxy import LatencyProxy

from ..helpers import cli_env, digests, home_env, read_digests, status, wait_for

pytestmark = pytest.mark.integration
MiB = 1024**2


def _files(prefix: str, n: int, size: int) -> dict[str, bytes]:
    return {f"{prefix}/f{i:02d}.bin": os.urandom(size + i) for i in range(n)}


def test_scale_out_drain_and_kill_keep_the_cache(tmp_path, moto):
    from ray.cluster_utils import Cluster

    s3 = moto.filesystem()
    s3.mkdir("fc-elastic")
    files = _files("one", 20, 2 * MiB)                  # 40 MiB in 1 MiB blocks
    s3.pipe({f"fc-elastic/{k}": v for k, v in files.items()})
    s3.pipe({f"fc-elastic/two/{k.removeprefix('one/')}": v for k, v in files.items()})
    want = digests({k.removeprefix("one/"): v for k, v in files.items()})
    total = sum(len(v) for v in files.values())

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                            "include_dashboard": False})
    first = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    env = dict(os.environ, FLUIDCACHE_HOME=str(tmp_path / "home"), FLUIDCACHE_HOST="127.0.0.1")

    def alive() -> dict:
        return {w["node_id"]: w for w in status(env)["workers"] if w["alive"]}

    def store_bytes() -> int:
        return sum(w["stats"]["ufs_bytes_read"] for w in alive().values())

    def settled(n: int):
        """n workers alive, and nothing left to move."""
        st = status(env)
        up = [w for w in st["workers"] if w["alive"]]
        return st if len(up) == n and st["rebalance"]["pending_blocks"] == 0 else None

    def full_pass(name: str) -> int:
        before = store_bytes()
        assert read_digests(env, name, want, short_circuit=False) == want
        return store_bytes() - before

    config = tmp_path / "config.json"      # moves slow enough that a read meets them
    config.write_text('{"rebalance_rate": "1MiB"}')   # ~13 s of moves at scale-out
    try:
        cli_env(env, "start", "--address", cluster.address, "--config", str(config),
                "--mem", "96MiB",
                "--mem-path", str(tmp_path / "mem"), "--ssd", f"{tmp_path}/ssd:64MiB",
                "--block-size", "1MiB")
        opts = [f"--option={k}={v}" for k, v in moto.options().items()]
        cli_env(env, "dataset", "create", "el", "--mount", "/=s3://fc-elastic/one",
                "--sync", "never", *opts)
        cli_env(env, "load", "fluid://el", "--no-progress")
        cli_env(env, "pin", "fluid://el")   # pins must follow their blocks
        wait_for(lambda: settled(2), what="two workers, loaded")

        # -- scale out: 2 -> 3; the new node's share moves to it from the holders
        added = cluster.add_node(num_cpus=1)
        wait_for(lambda: len(alive()) == 3, what="a third worker")
        # read while the blocks move: a block not moved yet comes from its holder
        refetched = full_pass("el")
        assert refetched <= 0.02 * total, f"{refetched} of {total} bytes from the store"
        assert alive()[added.node_id]["stats"]["peer_fetches"] > 0   # (the moves were slow)
        st = wait_for(lambda: settled(3), what="a third worker and its blocks moved")
        rb = st["rebalance"]
        assert rb["moved_blocks"] > 0 and rb["bytes_moved"] >= rb["moved_blocks"] * 1000
        held = {w["node_id"]: sum(t["blocks"] for t in w["tiers"]) for w in st["workers"]}
        fetched = alive()[added.node_id]["stats"]["peer_fetches"]
        # what it holds was moved to it or read from its holder (a block may be both
        # at once: then it counts in both)
        assert rb["moved_blocks"] <= held[added.node_id] <= rb["moved_blocks"] + fetched
        blocks = sum(len(range(0, len(v), MiB)) for v in files.values())
        assert sum(held.values()) == blocks
        refetched = full_pass("el")
        assert refetched <= 0.02 * total, f"{refetched} of {total} bytes from the store"
        freed = cli_env(env, "free", "fluid://el").stdout     # not forced: pins hold
        assert freed.startswith("freed 0 blocks"), freed

        # -- drain: the first node hands its blocks on, then its worker retires
        out = cli_env(env, "drain", first.node_id, "--wait", "--timeout", "120").stdout
        assert out.strip() == f"{first.node_id}: retired", out
        st = status(env)
        assert first.node_id in st["rebalance"]["retired"]
        assert first.node_id not in alive()
        cluster.remove_node(first)
        wait_for(lambda: settled(2), what="two workers after the drain")
        refetched = full_pass("el")
        assert refetched <= 0.02 * total, f"{refetched} of {total} bytes from the store"
        held = sum(t["blocks"] for w in alive().values() for t in w["tiers"])
        assert held == blocks, f"{held} blocks held for {blocks}: none lost, no extra copy"

        # -- kill without a drain, 2 replicas: nothing refetched (the store is off)
        third = cluster.add_node(num_cpus=1)
        wait_for(lambda: settled(3), what="a third worker again")
        proxy = LatencyProxy(moto.endpoint, 0.0).__enter__()
        try:
            popts = [f"--option={k}={v}" for k, v in
                     dict(moto.options(), endpoint_url=proxy.endpoint).items()]
            cli_env(env, "dataset", "create", "two", "--mount", "/=s3://fc-elastic/two",
                    "--sync", "never", "--replicas", "2", *popts)
            cli_env(env, "load", "fluid://two", "--no-progress")
            read_digests(env, "two", want, short_circuit=False)   # listed, all cached
        finally:
            proxy.__exit__()
        cluster.remove_node(third)
        wait_for(lambda: settled(2) and third.node_id not in alive(),
                 what="the killed node's worker lost, the copies made again")
        assert read_digests(env, "two", want, short_circuit=False) == want

        # -- Ray drains a node (as its autoscaler does before it removes one): so do we
        fourth = cluster.add_node(num_cpus=1)
        wait_for(lambda: settled(3), what="a third worker once more")
        import subprocess
        subprocess.run(["ray", "drain-node", "--address", cluster.address, "--node-id",
                        fourth.node_id, "--reason", "DRAIN_NODE_REASON_PREEMPTION",
                        "--reason-message", "a test", "--deadline-remaining-seconds", "120"],
                       check=True, capture_output=True, timeout=60)
        wait_for(lambda: fourth.node_id in status(env)["rebalance"]["retired"],
                 timeout=240,       # a loaded 2-core machine took over 120 s once
                 what="the worker of the node Ray drains retired")
        cluster.remove_node(fourth)
        wait_for(lambda: settled(2), what="two workers after Ray's drain")
        refetched = full_pass("el")
        assert refetched <= 0.02 * total, f"{refetched} of {total} bytes from the store"

        # -- a worker that keeps a must-cache file (its only copy) is not retired
        # while it has it; the file stays readable from it meanwhile
        fifth = cluster.add_node(num_cpus=1)
        wait_for(lambda: settled(3), what="three workers for the kept file")
        cli_env(env, "dataset", "create", "mc", "--mount", "/=s3://fc-elastic/mc",
                "--write-mode", "must-cache", *opts)
        body = os.urandom(3 * MiB + 7)
        with home_env(env["FLUIDCACHE_HOME"]):
            import fluidcache
            from fluidcache.understore.versions import parse_cached
            c = fluidcache.connect()
            fs = c.filesystem(skip_instance_cache=True)
            fs.pipe_file("fluid://mc/kept.bin", body)
            holder = parse_cached(fs.info("fluid://mc/kept.bin")["version"])[0]
            got = c.drain(holder)
            assert got["state"] == "draining" and got["kept_files"] == 1, got
            assert c.drain(holder, wait=True, timeout=3)["state"] == "draining"
            assert fs.cat_file("fluid://mc/kept.bin") == body   # from the draining worker
            fs.rm("fluid://mc/kept.bin")
            assert c.drain(holder, wait=True, timeout=60)["state"] == "retired"
            c.close()
        if holder == fifth.node_id:
            cluster.remove_node(fifth)
    finally:
        cli_env(env, "stop", check=False)
        cluster.shutdown()
