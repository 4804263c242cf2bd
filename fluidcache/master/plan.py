"""Data operations, planned: the files and blocks a path covers, which worker should hold
each block (`load`), which are cached (`du`, `ls -l`) and which keys a rule (pin, TTL,
free) covers.

Pure: listings, file ids and block holders come in as functions; no Ray, clocks or I/O.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from .. import blocks, placement
from .listing import DIR


class FileRef(NamedTuple):
    path: str         # inside the dataset
    size: int
    version: str
    fid: str


def walk(listing: Callable[[str], object], fid: Callable[[str, str], str],
         path: str) -> Iterator[FileRef]:
    """The files under `path`, recursively (a file: itself). `listing(dir)` returns a
    DirListing, or a file's entry (a dict) when the path is a file; `fid(path, version)`
    gives a file id."""
    todo = [path]
    while todo:
        d = todo.pop()
        found = listing(d)
        if isinstance(found, dict):
            yield FileRef(d, int(found["size"]), found["version"], found["fid"])
            continue
        for i in range(len(found)):
            name, kind, size, version = found.entry(i)
            child = f"{d}/{name}" if d else name
            if kind == DIR:
                todo.append(child)
            else:
                yield FileRef(child, size, version, fid(child, version))


def file_blocks(f: FileRef, block_size: int) -> list[tuple[int, str, int]]:
    """(index, key, length) of every block of a file."""
    return [(i, blocks.block_key(f.fid, i, block_size), blocks.block_length(f.size, block_size, i))
            for i in range(blocks.block_count(f.size, block_size))]


def keys(files: Sequence[FileRef], block_size: int) -> list[str]:
    return [k for f in files for _, k, _ in file_blocks(f, block_size)]


class LoadPlan(NamedTuple):
    items: dict[str, list[list]]     # worker id -> [[file no, path, version, size, index, fid]]
    files: int
    blocks: int                      # blocks to fetch (one per owner that lacks it)
    bytes: int
    cached_bytes: int                # already where they belong: skipped
    blocks_per_file: list[int]       # fetches planned per file (for files-done progress)
    sizes: list[int]


def plan_load(files: Sequence[FileRef], workers: Sequence[dict], selector: dict | None,
              replicas: int, block_size: int,
              holders: Callable[[str], Sequence[str]]) -> LoadPlan:
    """Each block goes to its `replicas` owners among the eligible workers (the dataset's
    selector), by the same rendezvous rank clients read with; owners that hold it
    already are skipped, so a re-run loads only what is missing."""
    eligible = [w["id"] for w in workers
                if placement.matches(selector or {}, w.get("labels") or {},
                                     w.get("resources") or {})]
    items: dict[str, list[list]] = {}
    n_blocks = n_bytes = cached = 0
    per_file: list[int] = []
    for no, f in enumerate(files):
        planned = 0
        for index, key, length in file_blocks(f, block_size):
            have = set(holders(key))
            for w in placement.owners(key, eligible, replicas) if eligible else ():
                if w in have:
                    cached += length
                    continue
                items.setdefault(w, []).append([no, f.path, f.version, f.size, index, f.fid])
                n_blocks += 1
                n_bytes += length
                planned += 1
        per_file.append(planned)
    return LoadPlan(items, len(files), n_blocks, n_bytes, cached, per_file,
                    [f.size for f in files])


def usage(files: Sequence[FileRef], block_size: int, holders: Callable[[str], Sequence[str]],
          per_file: bool = False) -> dict:
    """`du`: files, total bytes, and bytes with at least one cached copy (and per file)."""
    total = cached = 0
    detail: dict[str, int] = {}
    for f in files:
        total += f.size
        got = sum(length for _, key, length in file_blocks(f, block_size) if holders(key))
        cached += got
        if per_file:
            detail[f.path] = got
    out = {"files": len(files), "total_bytes": total, "cached_bytes": cached}
    if per_file:
        out["cached_by_file"] = detail
    return out
