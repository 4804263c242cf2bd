"""The `fluidcache` command. A thin shell over cluster.py and the Python API.

Every error ends in one line on stderr and a non-zero exit; nothing prints a traceback
unless FLUIDCACHE_DEBUG is set.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import cli_data
from .config import default_home, format_size, load, parse_ssd

EXAMPLES = """examples:
  fluidcache start --mem 2GiB --ssd /mnt/nvme/fluidcache:100GiB
  fluidcache dataset create imagenet --mount /=s3://bucket/imagenet \\
      --option endpoint_url=http://127.0.0.1:9000
  fluidcache load fluid://imagenet/train
  fluidcache du fluid://imagenet --json
  fluidcache status
  fluidcache stop
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fluidcache", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="A distributed data cache for AI and big-data jobs.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser("start", help="start a cluster (a local one by default)",
                       epilog="example: fluidcache start --mem 512MiB --ssd /tmp/fc:4GiB")
    s.add_argument("--address", help="join this Ray cluster (e.g. auto) instead of starting one")
    s.add_argument("--mem", help="memory tier quota, e.g. 512MiB")
    s.add_argument("--mem-path", help="memory tier directory (default: under /dev/shm)")
    s.add_argument("--ssd", action="append", default=[], metavar="PATH:SIZE",
                   help="an SSD tier directory and quota (repeatable, one per level)")
    s.add_argument("--hdd", action="append", default=[], metavar="PATH:SIZE",
                   help="an HDD tier below the SSD tiers (repeatable)")
    s.add_argument("--block-size", help="block size (default 4MiB)")
    s.add_argument("--no-promote", action="store_true",
                   help="do not move blocks read from a lower tier up")
    s.add_argument("--eviction", choices=["lru", "lfu", "fill-once"])
    s.add_argument("--port", type=int, help="master RPC port (default: any free port)")
    s.add_argument("--host", help="address servers bind to (default: 127.0.0.1 locally, "
                                  "each node's own address with --address)")
    s.add_argument("--config", help="a JSON config file")
    s.add_argument("--no-dashboard", action="store_true", help="do not start Ray's dashboard")
    s.add_argument("--node-selector", action="append", default=[], metavar="LABEL=VALUE",
                   help="put workers only on Ray nodes with this label (or resource:NAME)")

    st = sub.add_parser("stop", help="stop the cluster `start` made (its memory tier is "
                        "given back)")
    st.add_argument("--keep-cache", action="store_true",
                    help="keep the memory tier's blocks for the next start of this cluster")

    d = sub.add_parser("dataset", help="create, list, show and remove datasets")
    dsub = d.add_subparsers(dest="dcmd", required=True, metavar="VERB")
    c = dsub.add_parser("create", help="create a dataset over one or more mounts",
                        epilog="example: fluidcache dataset create imagenet "
                               "--mount /=s3://bucket/imagenet --mount /extra=file:///data")
    c.add_argument("name")
    c.add_argument("--mount", action="append", required=True, metavar="/POINT=URL")
    c.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="an fsspec option of the under store (JSON values are parsed)")
    c.add_argument("--replicas", type=int, default=1, help="owners per block (1-16)")
    c.add_argument("--sync", help="metadata sync policy: always, never or an interval "
                                  "(60s, 5m); default: the cluster's (60s)")
    c.add_argument("--selector", action="append", default=[], metavar="LABEL=VALUE",
                   help="cache only on nodes with this Ray node label, or resource:NAME")
    c.add_argument("--routing", choices=["partitioned", "local-first"], default="partitioned",
                   help="partitioned: blocks spread over the cluster (capacity adds up); "
                        "local-first: each node caches what it reads")
    c.add_argument("--write-mode", default="read-only",
                   choices=["read-only", "through", "cache-through", "async-through",
                            "must-cache"],
                   help="read-only (default): writes raise; through: each file goes to "
                        "the under store when closed; cache-through: and its blocks are "
                        "cached; async-through: kept on the writing worker's disk at "
                        "close, uploaded in the background (see sync); must-cache: kept "
                        "in the cache only, never uploaded")
    c.add_argument("--write-ttl", metavar="DURATION",
                   help="must-cache: how long a written file is kept (e.g. 1h); "
                        "default: until removed")
    c.add_argument("--namespace")
    ls = dsub.add_parser("ls", help="list datasets")
    ls.add_argument("--json", action="store_true")
    for verb in ("show", "rm"):
        v = dsub.add_parser(verb, help=f"{verb} a dataset")
        v.add_argument("name")

    n = sub.add_parser("namespace", help="create and list namespaces (each has a token)")
    nsub = n.add_subparsers(dest="ncmd", required=True, metavar="VERB")
    nc = nsub.add_parser("create", help="create a namespace and print its token",
                         epilog="example: FLUIDCACHE_TOKEN=$(fluidcache namespace create team-a "
                                "--allow s3://team-a-data)")
    ng = nsub.add_parser("grant", help="let a namespace mount more (grants only add)",
                         epilog="example: fluidcache namespace grant team-a --allow "
                                "s3://shared/imagenet --allow-endpoint http://minio:9000")
    for v in (nc, ng):
        v.add_argument("name")
        v.add_argument("--allow", action="append", default=[], metavar="URL",
                       help="a URL prefix it may mount, e.g. s3://bucket/prefix (repeatable)")
        v.add_argument("--allow-endpoint", action="append", default=[], metavar="URL",
                       help="a store endpoint its mounts may name (repeatable)")
        v.add_argument("--node-credentials", action="store_true",
                       help="its mounts may use the nodes' own credentials")
    nsub.add_parser("ls", help="list namespaces")
    nshow = nsub.add_parser("show", help="a namespace's grant (JSON)")
    nshow.add_argument("name", nargs="?")

    cli_data.add_parsers(sub)
    sv = sub.add_parser("serve", help="run a node of a cluster in the foreground (the "
                        "container image's entry; SIGTERM stops it cleanly)")
    svs = sv.add_subparsers(dest="role", required=True, metavar="ROLE")
    hd = svs.add_parser("head", help="a Ray head with the master and this node's worker")
    hd.add_argument("--config", help="the fluidcache config file (JSON)")
    hd.add_argument("--datasets", help="a JSON list of datasets to create at start")
    hd.add_argument("--ray-port", type=int, default=6379)
    hd.add_argument("--metrics-port", type=int, help="Ray's Prometheus metrics port")
    hd.add_argument("--no-dashboard", action="store_true", help="do not start Ray's dashboard")
    wk = svs.add_parser("worker", help="a Ray node joining the head (gets a cache worker)")
    wk.add_argument("--head", required=True, metavar="HOST:PORT", help="the Ray head's address")
    mt = sub.add_parser("mount", help="mount a dataset as a directory (FUSE); returns once "
                        "the mount is live", epilog="example: fluidcache mount "
                        "fluid://imagenet /mnt/imagenet && ls /mnt/imagenet")
    mt.add_argument("url", metavar="fluid://DATASET[/PATH]")
    mt.add_argument("mountpoint")
    mt.add_argument("--foreground", action="store_true",
                    help="serve in this process until unmounted (SIGTERM unmounts)")
    mt.add_argument("--allow-other", action="store_true",
                    help="let other users see the mount (needs user_allow_other in "
                         "/etc/fuse.conf unless root)")
    um = sub.add_parser("unmount", help="unmount a mount and end its daemon (a mount "
                        "whose daemon died is cleaned up)")
    um.add_argument("mountpoint")
    hl = sub.add_parser("health", help="exit 0 if the master (or a worker) answers a ping")
    hl.add_argument("--worker", metavar="HOST:PORT", help="ping this worker's data server")
    dm = sub.add_parser("demo", help="a local cluster, a local S3 and a DataLoader, cold vs warm")
    dm.add_argument("--files", type=int, default=300)
    dm.add_argument("--keep", action="store_true", help="leave the cluster running")
    return p


def _start(a) -> int:
    from . import cluster
    tiers = None
    if a.mem or a.ssd or a.mem_path or a.hdd:
        base = load(a.config)
        mem = base.tiers[0]
        from .config import TierConfig
        from .config import parse_size
        tiers = [TierConfig("MEM", a.mem_path or mem.path,
                            parse_size(a.mem) if a.mem else mem.quota)]
        tiers += [parse_ssd(s) for s in a.ssd] if a.ssd else list(base.tiers[1:])
        tiers += [parse_ssd(s, "HDD") for s in a.hdd]
    host = a.host
    if host is None and a.address is not None and "FLUIDCACHE_HOST" not in os.environ:
        host = "auto"   # on a Ray cluster each server binds its own node's address
    journal = None if load(a.config).journal_dir else str(default_home() / "journal")
    cfg = load(a.config, journal_dir=journal, block_size=a.block_size, eviction=a.eviction,
               master_port=a.port,
               promote=False if a.no_promote else None,
               node_selector=dict(x.split("=", 1) if "=" in x else (x, "")
                                  for x in a.node_selector) or None,
               tiers=[_tier_dict(t) for t in tiers] if tiers else None, host=host)
    info = cluster.start(cfg, a.address, dashboard=not a.no_dashboard)
    print(f"fluidcache is serving: master {info['master']}, {len(info['workers'])} worker(s)")
    for t in cfg.tiers:
        print(f"  tier {t.medium:<3} {t.path} ({format_size(t.quota)})")
    if info.get("dashboard"):
        print(f"  Ray dashboard: {info['dashboard']}")
    print("next: fluidcache dataset create NAME --mount /=s3://bucket/prefix")
    return 0


def _tier_dict(t) -> dict:
    return {"medium": t.medium, "path": t.path, "quota": t.quota, "high": t.high, "low": t.low}


def _dataset(a) -> int:
    from . import connect
    client = connect(namespace=getattr(a, "namespace", None))
    if a.dcmd == "create":
        d = client.create_dataset(a.name, a.mount, a.option, a.replicas, a.sync,
                                  a.selector or None, routing=a.routing,
                                  write_mode=a.write_mode, write_ttl=a.write_ttl)
        print(f"created dataset {d['name']}: " + ", ".join(f"{k} -> {v}"
                                                           for k, v in d["mounts"].items()))
    elif a.dcmd == "ls":
        ds = client.datasets()
        if a.json:
            print(json.dumps(ds, indent=2))
        for d in ([] if a.json else ds):
            print(f"{d['name']:<24} " + "  ".join(f"{k}={v}" for k, v in d["mounts"].items()))
    elif a.dcmd == "show":
        print(json.dumps(client.dataset(a.name), indent=2))
    elif a.dcmd == "rm":
        client.remove_dataset(a.name)
        print(f"removed dataset {a.name}")
    return 0


def _mount(a) -> int:
    from .posix import mount
    if a.cmd == "unmount":
        print(f"unmounted {a.mountpoint}" if mount.unmount(a.mountpoint)
              else f"nothing is mounted on {a.mountpoint}")
        return 0
    if a.foreground:
        return mount.serve(a.url, a.mountpoint, a.allow_other)
    rec = mount.mount(a.url, a.mountpoint, a.allow_other)
    print(f"mounted {rec['url']} on {rec['mountpoint']} "
          f"({'read-write' if rec['writable'] else 'read-only'}; daemon pid {rec['pid']}; "
          f"`fluidcache unmount {rec['mountpoint']}` ends it)")
    return 0


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        if a.cmd == "start":
            return _start(a)
        if a.cmd == "stop":
            from . import cluster
            print("stopped" if cluster.stop(keep_cache=a.keep_cache)
                  else "no cluster was running")
            return 0
        if a.cmd == "dataset":
            return _dataset(a)
        if a.cmd == "serve":
            from . import node
            if a.role == "head":
                return node.serve_head(a.config, a.datasets, a.ray_port,
                                       metrics_port=a.metrics_port,
                                       dashboard=not a.no_dashboard)
            return node.serve_worker(a.head)
        if a.cmd in ("mount", "unmount"):
            return _mount(a)
        if a.cmd == "health":
            from . import node
            return node.health(a.worker)
        done = cli_data.run(a)
        if done is not None:
            return done
        if a.cmd == "namespace":
            from . import connect
            client = connect()
            if a.ncmd == "create":
                print(client.create_namespace(a.name, a.allow, a.allow_endpoint,
                                              a.node_credentials))
            elif a.ncmd == "grant":
                print(json.dumps(client.grant(a.name, a.allow, a.allow_endpoint,
                                              a.node_credentials), indent=2))
            elif a.ncmd == "show":
                print(json.dumps(client.namespace(a.name), indent=2))
            else:
                print("\n".join(client.namespaces()))
            return 0
        if a.cmd == "demo":
            from .demo import run
            return run(a.files, keep=a.keep)
    except KeyboardInterrupt:
        print("fluidcache: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError) as exc:
        if os.environ.get("FLUIDCACHE_DEBUG"):
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"fluidcache: {msg}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
