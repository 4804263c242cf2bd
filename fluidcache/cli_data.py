"""The CLI's data verbs: load, free, pin, unpin, ttl, du, ls, sync, drain, and the status
table.

A thin shell over `fluidcache.connect()`'s Client: parse, call, print. Tables and the
load progress bar are drawn with rich; `--json` prints what scripts read.
"""
from __future__ import annotations

import argparse
import json
import sys

from .config import format_size

_EXAMPLES = {
    "load": "fluidcache load fluid://imagenet/train\n"
            "fluidcache load fluid://imagenet --replicas 2\n"
            "fluidcache load fluid://imagenet --metadata-only",
    "free": "fluidcache free fluid://imagenet/train",
    "pin": "fluidcache pin fluid://imagenet/val",
    "unpin": "fluidcache unpin fluid://imagenet/val",
    "ttl": "fluidcache ttl fluid://imagenet/tmp 2h\nfluidcache ttl fluid://imagenet/tmp never",
    "du": "fluidcache du fluid://imagenet/train --json",
    "ls": "fluidcache ls -l fluid://imagenet/train",
    "status": "fluidcache status\nfluidcache status --json",
    "sync": "fluidcache sync fluid://ckpt/run-7",
    "drain": "fluidcache drain 6a1f...c2 --wait\n"
             "fluidcache drain \"$HOSTNAME\" --wait --timeout 240",
}


def _sub(sub, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, epilog="example:\n  " +
                          _EXAMPLES[name].replace("\n", "\n  "),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def add_parsers(sub) -> None:
    p = _sub(sub, "load", "warm up a file, directory or dataset on the workers")
    p.add_argument("url", help="fluid://DATASET[/PATH]")
    p.add_argument("--metadata-only", action="store_true",
                   help="refresh listings and versions only")
    p.add_argument("--replicas", type=int, help="copies per block (default: the dataset's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the final status as JSON")
    p = _sub(sub, "free", "drop the cached blocks under a path, cluster-wide")
    p.add_argument("url")
    p.add_argument("--force", action="store_true", help="free pinned blocks too")
    for verb, text in (("pin", "keep a path's blocks from eviction (survives restarts)"),
                       ("unpin", "release a pin")):
        _sub(sub, verb, text).add_argument("url")
    p = _sub(sub, "ttl", "drop a path's cached blocks after a duration")
    p.add_argument("url")
    p.add_argument("duration", help="90s, 10m, 2h, 1d, or never (remove the TTL)")
    p = _sub(sub, "du", "files, total and cached bytes under a path")
    p.add_argument("url")
    p.add_argument("--json", action="store_true")
    p.add_argument("--verbose", "-v", action="store_true", help="cached bytes per tier")
    p = _sub(sub, "ls", "list a fluid:// directory")
    p.add_argument("url")
    p.add_argument("-l", action="store_true",
                   help="long format: size, cached share (* all cached) and name")
    p = _sub(sub, "sync", "wait until what was written under a path is in the under store "
             "(exit 1 if --timeout passed first)")
    p.add_argument("url")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="wait at most this long (default: as long as the uploads take)")
    p = _sub(sub, "status", "workers, tiers, counters and datasets")
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    p = _sub(sub, "drain", "move a node's cached blocks to the other workers, then retire "
             "its worker (exit 1 if --timeout passed first)")
    p.add_argument("node", help="a worker id or host name, as `fluidcache status` shows")
    p.add_argument("--wait", action="store_true", help="return once the worker is retired")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="wait at most this long (default: as long as the moves take)")


def run(a) -> int | None:
    """Run a data verb; None if `a.cmd` is not one of ours."""
    fn = {"load": _load, "free": _free, "pin": _rule, "unpin": _rule, "ttl": _rule,
          "du": _du, "ls": _ls, "status": _status, "sync": _sync, "drain": _drain}.get(a.cmd)
    return None if fn is None else fn(a)


def _client():
    from . import connect
    return connect()


def _load(a) -> int:
    client = _client()
    if a.metadata_only:
        r = client.load(a.url, metadata_only=True)
        print(f"listed {r['files']} files in {r['directories']} directories")
        return 0
    job = client.load(a.url, replicas=a.replicas, wait=False)
    if a.no_progress or a.json:
        st = job.wait()
    else:
        st = _with_progress(job)
    if a.json:
        print(json.dumps(st, indent=2))
    else:
        print(f"{st['state']}: {st['files_done']}/{st['files']} files, "
              f"{format_size(st['bytes_done'])} loaded, "
              f"{format_size(st['cached_bytes'])} were cached already, "
              f"{st['elapsed']:.1f}s")
        for e in st["errors"]:
            print(f"  error: {e}", file=sys.stderr)
    return 0 if st["state"] == "done" else 1


def _with_progress(job) -> dict:
    from rich.progress import (BarColumn, DownloadColumn, Progress,
                               TaskProgressColumn, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn, TransferSpeedColumn)
    first = job.last
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                  DownloadColumn(binary_units=True), TransferSpeedColumn(),
                  TextColumn("files {task.fields[files]}"), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), transient=False) as bar:
        files = bar.add_task(f"load fluid://{first['dataset']}/{first['path']}".rstrip("/"),
                             total=max(1, first["bytes"]),
                             files=f"0/{first['files']}")

        def update(st: dict) -> None:
            # the byte count drives the bar (rate and ETA); files are shown beside it
            bar.update(files, completed=st["bytes_done"] if st["bytes"] else 1,
                       total=max(1, st["bytes"]), files=f"{st['files_done']}/{st['files']}")
        return job.wait(update)


def _free(a) -> int:
    r = _client().free(a.url, force=a.force)
    print(f"freed {r['freed_blocks']} blocks ({format_size(r['freed_bytes'])})"
          + (f"; {r['pinned_blocks']} pinned blocks kept" if r["pinned_blocks"] else ""))
    return 0


def _sync(a) -> int:
    r = _client().sync(a.url, timeout=a.timeout)
    print(f"{r['path']}: {r['pending']} files pending upload ({r['write_mode']})")
    return 0 if not r["pending"] else 1


def _rule(a) -> int:
    client = _client()
    if a.cmd == "ttl":
        r = client.ttl(a.url, a.duration)
    else:
        r = getattr(client, a.cmd)(a.url)
    what = {"pin": "pinned", "unpin": "unpinned", "ttl_rm": "ttl removed"}.get(
        r["rule"], f"ttl {getattr(a, 'duration', '')}")
    print(f"{what}: {r['path']} ({r['files']} files)")
    return 0


def _du(a) -> int:
    r = _client().du(a.url, tiers=a.verbose)
    if a.json:
        print(json.dumps(r, indent=2))
        return 0
    share = r["cached_bytes"] / r["total_bytes"] if r["total_bytes"] else 1.0
    print(f"{r['path']}: {r['files']} files, {format_size(r['total_bytes'])}, "
          f"cached {format_size(r['cached_bytes'])} ({share:.0%})")
    for tier, n in sorted(r.get("cached_by_tier", {}).items()):
        print(f"  {tier:<4} {format_size(n)}")
    return 0


def _ls(a) -> int:
    client = _client()
    entries = client.filesystem().ls(a.url, detail=True)
    cached = {}
    if a.l and any(e["type"] == "file" for e in entries):
        cached = client.du(a.url, per_file=True)["cached_by_file"]
    for e in entries:
        name = "fluid://" + e["name"] + ("/" if e["type"] == "directory" else "")
        if not a.l:
            print(name)
            continue
        rel = e["name"].partition("/")[2]
        if e["type"] == "directory":
            mark = "     -"
        else:
            got = cached.get(rel, 0)
            mark = "     *" if got >= e["size"] else f"{got / e['size']:>5.0%}" if e["size"] \
                else "     *"
        print(f"{e['size']:>14} {mark}  {name}")
    return 0


def _drain(a) -> int:
    r = _client().drain(a.node, a.wait, a.timeout)
    more = ""
    if r["state"] == "draining":
        more = f", {r['pending_blocks']} blocks to move"
        if r.get("pending_files"):
            more += f", {r['pending_files']} files to upload first"
        if r.get("kept_files"):
            more += (f", {r['kept_files']} must-cache files only it holds (it waits for "
                     "them to be removed or to expire)")
    print(f"{r['node']}: {r['state']}{more}")
    return 1 if a.wait and r["state"] == "draining" else 0


def _status(a) -> int:
    st = _client().status()
    if a.json:
        print(json.dumps(st, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(f"master {st['master']['address']}")
    rb = st.get("rebalance") or {}
    if rb.get("pending_blocks") or rb.get("moved_blocks") or rb.get("draining"):
        console.print(f"rebalance: {rb['pending_blocks']} blocks to move, "
                      f"{rb['moved_blocks']} moved ({format_size(rb['bytes_moved'])})"
                      + (f", {rb['failed_blocks']} failed" if rb.get("failed_blocks") else "")
                      + (f"; draining {', '.join(w[:10] for w in rb['draining'])}"
                         if rb.get("draining") else ""))
    up = st.get("uploads") or {}
    if up.get("pending_files") or up.get("kept_files"):
        console.print(f"uploads pending: {up['pending_files']} files "
                      f"({format_size(up['pending_bytes'])}); kept in the cache only: "
                      f"{up['kept_files']} files ({format_size(up['kept_bytes'])})")
    t = Table(title="workers")
    for col in ("node / address", "state", "tier used / capacity", "hits", "misses", "hit%",
                "served", "from store", "evicted"):
        t.add_column(col, justify="left" if col in ("node / address", "state",
                                                    "tier used / capacity") else "right")
    for w in st["workers"]:
        s = w.get("stats", {})
        hits, misses = s.get("hits", 0), s.get("misses", 0)
        tiers = "\n".join(f"{x['name']} {format_size(x['used'])} / {format_size(x['capacity'])}"
                          for x in w["tiers"]) or "-"
        t.add_row(f"{w['node_id'][:10]}\n{w.get('address', '-')}",
                  "alive" if w["alive"] else "LOST", tiers, str(hits), str(misses),
                  f"{hits / (hits + misses):.0%}" if hits + misses else "-",
                  format_size(s.get("bytes_served", 0)), format_size(s.get("ufs_bytes_read", 0)),
                  str(s.get("evictions", 0)))
    console.print(t)
    d = Table(title="datasets")
    for col in ("name", "mounts", "cached", "hits", "misses", "hit%"):
        d.add_column(col, justify="right" if col in ("cached", "hits", "misses", "hit%")
                     else "left")
    for ds in st["datasets"]:
        hits, misses = ds.get("hits", 0), ds.get("misses", 0)
        d.add_row(ds["name"], "\n".join(f"{k} = {v}" for k, v in ds["mounts"].items()),
                  format_size(ds["cached_bytes"]), str(hits), str(misses),
                  f"{hits / (hits + misses):.0%}" if hits + misses else "-")
    console.print(d)
    return 0
