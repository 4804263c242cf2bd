"""The master's data operations: load (distributed warm-up), free, du and locate.

A shell over plan.py: it walks listings, asks the block map who holds what, and hands
the work to the workers through the membership room (Ray calls); the workers fetch and
drop blocks. Loads run on the workers; the master keeps each job's plan and adds up
their progress. A change the block map must show (a load done, a free) is waited for
until the worker's heartbeat that carries it has been applied, so `du` right after is
exact.
Owns: the load jobs (how many run, per tenant and in all; which are remembered), and
the bounded walk over listings (`files`: max_walk_files, walk_seconds) that the rules
room uses too.
Never: take the master lock while walking or planning (heartbeats go on), or change the
master's durable state (nothing here is journaled).
"""
from __future__ import annotations

import logging
import secrets
import threading
import time

from .. import paging
from ..config import Config
from ..dataset import Dataset
from ..errors import InvalidRequest, NotFound, Unavailable
from . import plan
from .blockmap import BlockMap
from .catalog import Target, target
from .core import MasterCore
from .listing import DIR
from .listings import Listings
from .membership import Membership

log = logging.getLogger(__name__)


class DataOps:
    def __init__(self, core: MasterCore, lock: threading.RLock, blocks: BlockMap,
                 listings: Listings, members: Membership, config: Config) -> None:
        self.core, self._lock, self.blocks = core, lock, blocks
        self.listings, self.members, self.config = listings, members, config
        self._jobs: dict[str, dict] = {}

    def job_count(self) -> int:
        with self._lock:
            return len(self._jobs)

    def _target(self, ns: str, args: dict) -> Target:
        return target(self.core, self._lock, ns, args)

    def _holders(self):
        return lambda key: self.blocks.holders(key)

    def files(self, ds: Dataset, path: str, refresh: bool = False,
               budget: int | None = None) -> list[plan.FileRef]:
        """The files under a path, sorted by path; at most `budget` (max_walk_files) of
        them: a larger walk is refused with a clear error, never done whole."""
        limit = self.config.max_walk_files if budget is None else budget
        deadline = time.monotonic() + self.config.walk_seconds
        out = []

        def lookup(d: str):
            """A file in its parent's cached listing is taken from there (a path asked
            alone would otherwise cost the store a round trip); else the listing."""
            parent, _, name = d.rpartition("/")
            with self._lock:
                held = None if refresh or not name else \
                    self.core.listing(ds.namespace, ds.name, parent, time.monotonic())
            i = held.find(name) if held is not None else None
            if i is not None:
                _, kind, size, version = held.entry(i)
                if kind != DIR:
                    return {"size": size, "version": version,
                            "fid": self.listings.fid(ds, d, version)}
            return self.listings.listing(ds, d, refresh)

        for f in plan.walk(lookup, lambda p, v: self.listings.fid(ds, p, v), path):
            out.append(f)
            if len(out) > limit:
                raise InvalidRequest(f"fluid://{ds.name}/{path}: more than {limit} files; "
                                     "name a narrower path (or raise max_walk_files)")
            if len(out) % 1024 == 0 and time.monotonic() > deadline:
                raise InvalidRequest(f"fluid://{ds.name}/{path}: walking it took over "
                                     f"{self.config.walk_seconds:g}s; name a narrower path")
        out.sort(key=lambda f: f.path)
        return out

    # -- load --------------------------------------------------------------------------
    def op_metadata_load(self, ns: str, args: dict) -> dict:
        """Refresh the listings under a path, recursively (`load --metadata-only`); a
        file is asked for on its own and replaces its entry in its parent's listing."""
        ds, path = self._target(ns, args)
        return self.listings.refresh_tree(ds, path)

    def op_load(self, ns: str, args: dict) -> dict:
        """Plan a warm-up of a file, directory or dataset and start it on the workers.
        Listings are refreshed first (new and changed files are seen)."""
        ds, path = self._target(ns, args)
        if args.get("metadata_only"):
            return dict(self.op_metadata_load(ns, args), job=None, state="done")
        replicas = args.get("replicas") or ds.replicas
        if not isinstance(replicas, int) or isinstance(replicas, bool) or \
                not 1 <= replicas <= 16:
            raise InvalidRequest("replicas must be 1..16")
        with self._lock:
            running = [j for j in self._jobs.values() if j["state"] == "running"]
        mine = sum(1 for j in running if j["ns"] == ns)
        cap = self.config.max_load_jobs if ns == "default" else self.config.tenant_loads
        if mine >= cap or len(running) >= self.config.max_load_jobs:
            raise Unavailable(f"{mine} loads of this namespace ({len(running)} in all) are "
                              f"running (at most {cap}, and {self.config.max_load_jobs} in "
                              "all); wait for one, or cancel one")
        files = self.files(ds, path, refresh=True)
        workers = self.members.alive()
        p = plan.plan_load(files, workers, ds.selector, replicas, self.config.block_size,
                           self._holders())          # no master lock: heartbeats go on
        job = secrets.token_hex(8)
        record = {"job": job, "ns": ns, "ds": ds.name, "path": path, "files": p.files,
                  "blocks": p.blocks, "bytes": p.bytes, "cached_bytes": p.cached_bytes,
                  "per_file": p.blocks_per_file, "sizes": p.sizes,
                  "workers": sorted(p.items), "started": time.time(),
                  "state": "running" if p.items else "done", "polled": time.monotonic()}
        accepted = self.members.call(p.items, "load_start", job, ns, ds.name,
                                      self.config.load_concurrency, timeout=30)
        for wid in p.items:      # handed its part separately: the items can be large
            if wid in accepted:
                self.members.call([wid], "load_items", job, p.items[wid], timeout=60)
        missing = set(p.items) - set(accepted)
        if missing:
            self.members.call(accepted, "load_cancel", job)
            raise Unavailable(f"workers {sorted(missing)} did not take their part of the "
                              "load; try again")
        with self._lock:
            self._jobs[job] = record
            kept = self.config.jobs_kept
            for old in sorted(self._jobs, key=lambda j: self._jobs[j]["started"])[:-kept]:
                if self._jobs[old]["state"] != "running":
                    del self._jobs[old]
        return self._public_job(record, {})

    def op_load_status(self, ns: str, args: dict) -> dict:
        record = self._job(ns, args)
        record["polled"] = time.monotonic()
        return self._refresh_job(record, bool(args.get("poll")))

    def _refresh_job(self, record: dict, poll: bool) -> dict:
        """Ask a job's workers how far they are; a job all of whose parts ended is done
        (or failed, or cancelled) once the reports that carry its blocks are applied."""
        parts = self.members.call(record["workers"], "load_progress", record["job"],
                                   timeout=10)
        if record["state"] == "running" and record["workers"]:
            states = [parts.get(w, {}).get("state", "lost") for w in record["workers"]]
            if all(s != "running" for s in states):
                seqs = {w: parts[w]["seq"] for w in record["workers"] if w in parts}
                if self.members.wait_applied(seqs, timeout=0.5 if poll else 15):
                    record["state"] = ("cancelled" if "cancelled" in states else
                                       "failed" if any(parts.get(w, {}).get("failed") or
                                                       s == "lost" for w, s in
                                                       zip(record["workers"], states, strict=True))
                                       else "done")
                    record["final"] = {w: dict(v, by_file={}) for w, v in parts.items()}
                    record["final_files"] = self._files_done(record, parts)
        elif not record["workers"]:
            record["state"] = "done"
        return self._public_job(record, parts)

    def op_load_cancel(self, ns: str, args: dict) -> dict:
        record = self._job(ns, args)
        self.members.call(record["workers"], "load_cancel", record["job"], timeout=10)
        return self.op_load_status(ns, {"job": record["job"]})

    def prune_jobs(self, now: float) -> None:
        """Running jobs nobody asked about lately are asked about here (so a finished
        one stops counting as running although no one polls it); those nobody asked
        about for an hour are dropped (their workers' parts end on their own)."""
        with self._lock:
            idle = self.config.job_idle
            for job in [j for j, r in self._jobs.items()
                        if r["state"] == "running" and now - r.get("polled", now) > idle]:
                del self._jobs[job]
            quiet = [r for r in self._jobs.values() if r["state"] == "running" and
                     now - r.get("seen", r["polled"]) > self.config.job_check]
        for record in quiet:
            record["seen"] = now
            try:
                self._refresh_job(record, poll=True)
            except Exception as exc:  # noqa: BLE001 - the next round asks again
                log.debug("load %s: %s", record["job"], exc)

    def _job(self, ns: str, args: dict) -> dict:
        job = args.get("job")
        with self._lock:
            record = self._jobs.get(job) if isinstance(job, str) else None
        if record is None or (record["ns"] != ns and ns != "default"):
            raise NotFound(f"no load job {job!r}")       # the admin sees every job
        return record

    def _files_done(self, record: dict, parts: dict) -> int:
        done: dict[int, int] = {}
        for part in parts.values():
            for no, n in part.get("by_file", {}).items():
                done[int(no)] = done.get(int(no), 0) + n
        return sum(1 for no, want in enumerate(record["per_file"]) if done.get(no, 0) >= want)

    def _public_job(self, record: dict, parts: dict) -> dict:
        final = record.get("final")
        src = final if final is not None else parts
        errors = [e for part in src.values() for e in part.get("errors", [])][:5]
        return {"job": record["job"], "state": record["state"], "dataset": record["ds"],
                "path": record["path"], "files": record["files"], "blocks": record["blocks"],
                "bytes": record["bytes"], "cached_bytes": record["cached_bytes"],
                "files_done": record.get("final_files") if final is not None
                else self._files_done(record, parts),
                "blocks_done": sum(p.get("done_blocks", 0) for p in src.values()),
                "bytes_done": sum(p.get("done_bytes", 0) for p in src.values()),
                "failed_blocks": sum(p.get("failed", 0) for p in src.values()),
                "errors": errors, "elapsed": time.time() - record["started"]}

    # -- free --------------------------------------------------------------------------
    def op_free(self, ns: str, args: dict) -> dict:
        """Drop the cached blocks of the files under a path, on every worker (pinned
        blocks stay unless `force`)."""
        ds, path = self._target(ns, args)
        keys = plan.keys(self.files(ds, path), self.config.block_size)
        return self._free(keys, bool(args.get("force")))

    def free_keys(self, keys: list[str]) -> None:
        """Drop blocks on every worker (files replaced or removed), pinned ones too, not
        waiting for the reports that show it."""
        self._free(keys, True, wait=False)

    def _free(self, keys_or_map, force: bool, wait: bool = True) -> dict:
        if isinstance(keys_or_map, dict):
            calls = keys_or_map
        else:
            calls = {w["id"]: keys_or_map for w in self.members.alive()}
        res = {}
        for wid, keys in calls.items():
            res.update(self.members.call([wid], "free", keys, force, timeout=60))
        if wait:
            self.members.wait_applied({w: r["seq"] for w, r in res.items()})
        return {"freed_blocks": sum(r["blocks"] for r in res.values()),
                "freed_bytes": sum(r["bytes"] for r in res.values()),
                "pinned_blocks": sum(r["pinned"] for r in res.values())}

    # -- du ----------------------------------------------------------------------------
    def op_du(self, ns: str, args: dict) -> dict:
        """Files, total bytes and cached bytes under a path (a block counts once however
        many copies it has); per tier on request. With `per_file`, the cached bytes of a
        page of files (`after`, `limit`) instead: {"cached_by_file", "next"}."""
        ds, path = self._target(ns, args)
        files = self.files(ds, path)
        if args.get("per_file"):
            limit = paging.check_cursor(args.get("after"),
                                        args.get("limit", paging.PAGE_ITEMS))
            chosen, nxt = paging.page(files, lambda f: f.path, args.get("after"), limit)
            got = plan.usage(chosen, self.config.block_size, self._holders(), per_file=True)
            return {"cached_by_file": got["cached_by_file"], "next": nxt}
        out = plan.usage(files, self.config.block_size, self._holders())
        out = {"path": f"fluid://{ds.name}/{path}".rstrip("/"), **out}
        if args.get("tiers"):
            keys = plan.keys(files, self.config.block_size)
            tiers: dict[str, int] = {}
            for res in self.members.call([w["id"] for w in self.members.alive()],
                                          "where", keys, timeout=30).values():
                for tier, n in res.items():
                    tiers[tier] = tiers.get(tier, 0) + n
            out["cached_by_tier"] = tiers
        return out

    def op_locate(self, ns: str, args: dict) -> dict:
        """Where the files under each path are cached: {"found": {path: {worker id:
        bytes}}, "done": n}, from the block reports (worker ids are Ray node ids). The
        reply stops when it is full, or when the files walked reach max_walk_files: the
        caller asks again for paths[done:]."""
        paths = args.get("paths")
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths) \
                or len(paths) > paging.PAGE_ITEMS:
            raise InvalidRequest(f"locate needs a list of at most {paging.PAGE_ITEMS} paths")
        out, size, walked, done, seen = {}, 0, 0, 0, {}
        for p in paths:
            ds, path = self._target(ns, {"ds": args.get("ds"), "p": p})
            if path in seen:                   # asked twice, however spelled: once
                out[p] = seen[path]
                done += 1
                continue
            try:
                files = self.files(ds, path, budget=self.config.max_walk_files - walked)
            except InvalidRequest:
                if done == 0:
                    raise                      # one path alone is over the budget
                break                          # this request's budget is spent
            walked += len(files)
            per: dict[str, int] = {}
            for f in files:
                got = self.blocks.file_by_worker(f"{ns}/{ds.name}", f.fid)
                for w, n in got.items():
                    per[w] = per.get(w, 0) + n
            size += paging.size_of([p, per])
            if out and size > paging.PAGE_BYTES:
                break
            out[p] = seen[path] = per
            done += 1
        return {"found": out, "done": done}

    def free_owner(self, owner: str) -> None:
        """A removed dataset's blocks, freed on every worker that holds them."""
        per = self.blocks.keys_of_owner(owner)
        if per:
            self._free(per, force=True)

