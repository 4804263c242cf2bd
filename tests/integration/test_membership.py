"""Membership on a multi-node Ray cluster (ray.cluster_utils.Cluster: a head and two
nodes on this machine): a worker on every node, a node added later gets one, a removed
node's worker is marked lost and no longer routed to, and reads stay correct throughout."""
from __future__ import annotations

import json
import os

import pytest

from ..helpers import cli_env, digests, read_digests, status, wait_for

pytestmark = pytest.mark.integration


def test_workers_follow_the_nodes(tmp_path, moto, dataset_files):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                            "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=1, labels={"cache": "yes"}), cluster.add_node(num_cpus=1)]
    cluster.wait_for_nodes()
    env = dict(os.environ, FLUIDCACHE_HOME=str(tmp_path / "home"), FLUIDCACHE_HOST="127.0.0.1")
    want = digests(dataset_files)
    names = sorted(dataset_files)
    try:
        cli_env(env, "start", "--address", cluster.address, "--mem", "16MiB",
             "--mem-path", str(tmp_path / "mem"), "--ssd", f"{tmp_path}/ssd:64MiB",
             "--block-size", "1MiB")
        st = status(env)
        assert st["master"]["node_id"] == cluster.head_node.node_id   # the node that stays
        assert len(st["workers"]) == 3 and all(w["alive"] for w in st["workers"])
        assert len({w["node_id"] for w in st["workers"]}) == 3
        assert len({w["tiers"][0]["path"] for w in st["workers"]}) == 3   # no shared tier dirs
        opts = [f"--option={k}={v}" for k, v in moto.options().items()]
        # a dataset that may be cached only on nodes labelled cache=yes
        cli_env(env, "dataset", "create", "sel", "--mount", "/=s3://fc-test/ds/images",
             "--selector", "cache=yes", *opts)
        images = [n.removeprefix("images/") for n in names if n.startswith("images/")]
        got = read_digests(env, "sel", images, short_circuit=False)
        assert got == {n: want["images/" + n] for n in images}
        holding = {w["node_id"]: sum(t["blocks"] for t in w["tiers"])
                   for w in status(env)["workers"]}
        assert holding[nodes[0].node_id] == len(images)          # the labelled node holds all
        assert sum(holding.values()) == len(images)               # and nobody else any
        cli_env(env, "dataset", "create", "d", "--mount", "/=s3://fc-test/ds", *opts)
        # local-first: a Ray task on one node reads; that node's worker caches it all
        cli_env(env, "dataset", "create", "lf", "--mount", "/=s3://fc-test/ds/multi",
                "--routing", "local-first", *opts)
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        ray.init(address=cluster.address, runtime_env={"env_vars": {
            "FLUIDCACHE_HOME": env["FLUIDCACHE_HOME"]}})
        try:
            @ray.remote(num_cpus=0)
            def read_here(names):
                import hashlib
                import fsspec
                fs = fsspec.filesystem("fluid", short_circuit=False)
                return {n: hashlib.sha256(fs.cat_file("fluid://lf/" + n)).hexdigest()
                        for n in names}
            multi = [n.removeprefix("multi/") for n in names if n.startswith("multi/")]
            got = ray.get(read_here.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                nodes[1].node_id, soft=False)).remote(multi), timeout=120)
        finally:
            ray.shutdown()
        assert got == {n: want["multi/" + n] for n in multi}
        lf_bytes = sum(len(dataset_files["multi/" + n]) for n in multi)
        lf = wait_for(lambda: next((d for d in status(env)["datasets"] if d["name"] == "lf"
                                    and d["cached_bytes"] == lf_bytes), None),
                      what="lf's full block report")
        assert set(lf["cached_by_worker"]) == {nodes[1].node_id}
        # data-affinity scheduling: the node that caches the data, from the block reports
        from fluidcache import connect, scheduling
        c = connect(address=json.loads((tmp_path / "home" / "cluster.json").read_text())[
            "master"], token=json.loads((tmp_path / "home" / "cluster.json").read_text())[
            "token"])
        for ds, node in (("lf", nodes[1].node_id), ("sel", nodes[0].node_id)):
            strategy = scheduling.strategy_for(f"fluid://{ds}", client=c)
            assert strategy.node_id == node and strategy.soft
        groups = scheduling.split_by_node([f"fluid://lf/{n}" for n in multi] +
                                          [f"fluid://sel/{n}" for n in images], client=c)
        assert {k: len(v) for k, v in groups.items()} == {nodes[1].node_id: len(multi),
                                                          nodes[0].node_id: len(images)}
        assert scheduling.strategy_for("fluid://d/deep", client=c) == "DEFAULT"  # not cached
        assert read_digests(env, "d", names, short_circuit=False) == want
        served = [w for w in status(env)["workers"] if w["stats"]["misses"] > 0]
        assert len(served) >= 2                   # blocks spread over the nodes

        # one cold file read on every node at once (a model every rank loads): one
        # store read per block, by its owner; the other nodes read from the owners
        import hashlib
        body = os.urandom(3 * 2**20 + 5)
        moto.filesystem().pipe_file("fc-test/one/big3.bin", body)
        cli_env(env, "dataset", "create", "one", "--mount", "/=s3://fc-test/one", *opts)

        def store_bytes() -> int:
            return sum(w["stats"]["ufs_bytes_read"] for w in status(env)["workers"])

        before = store_bytes()
        ray.init(address=cluster.address, runtime_env={"env_vars": {
            "FLUIDCACHE_HOME": env["FLUIDCACHE_HOME"]}})
        try:
            @ray.remote(num_cpus=0)
            def read_big():
                import hashlib
                import fsspec
                fs = fsspec.filesystem("fluid", short_circuit=False)
                return hashlib.sha256(fs.cat_file("fluid://one/big3.bin")).hexdigest()
            every = [cluster.head_node, *nodes]
            got = ray.get([read_big.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                n.node_id, soft=False)).remote() for n in every], timeout=120)
        finally:
            ray.shutdown()
        assert got == [hashlib.sha256(body).hexdigest()] * len(every)
        wait_for(lambda: store_bytes() - before >= len(body), what="the fetches' reports")
        assert store_bytes() - before == len(body)            # 1.0x the file, not 3x

        added = cluster.add_node(num_cpus=1)      # a node joins: it gets a worker
        st = wait_for(lambda: (s := status(env)) and len(
            [w for w in s["workers"] if w["alive"]]) == 4 and s, what="a worker on the new node")
        assert added.node_id in {w["node_id"] for w in st["workers"]}
        assert read_digests(env, "d", names, short_circuit=False) == want

        before_pid = st["master"]["pid"]
        gone = nodes[0]
        cluster.remove_node(gone)                 # a node leaves: its worker is lost
        last = []

        def lost():
            s = status(env)
            last[:] = [(w["node_id"][:8], w["alive"], w.get("error")) for w in s["workers"]]
            return s if any(w["node_id"] == gone.node_id and not w["alive"]
                            for w in s["workers"]) else None

        try:
            st = wait_for(lost, what="the removed node's worker to be marked lost")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; gone {gone.node_id[:8]}; workers {last}") from None
        assert len([w for w in st["workers"] if w["alive"]]) == 3
        assert st["master"]["pid"] == before_pid   # the master was never disturbed
        # routed around the lost worker
        assert read_digests(env, "d", names, short_circuit=False) == want
        cli_env(env, "stop")
    finally:
        cluster.shutdown()
