"""The master's data operations: load (distributed warm-up), free, pin, unpin, ttl, du.

A shell over plan.py: it walks listings, asks the block map who holds what, and hands
the work to the workers (Ray calls); the workers fetch, drop, pin and expire blocks.
Pins and TTLs are journaled as path rules; each worker gets them as block keys (after a
change at once, after a restart of either side through its heartbeat).
Loads run on the workers; the master keeps each job's plan and adds up their progress.
A change the block map must show (a load done, a free) is waited for until the
worker's heartbeat that carries it has been applied, so `du` right after is exact.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time

import ray

from .. import names
from ..errors import InvalidRequest, NotFound, Unavailable
from ..dataset import Dataset
from .. import paging
from . import plan

log = logging.getLogger(__name__)
_TTL_GRACE = 60.0       # an expired TTL rule is retired this long after its deadline
_MAX_JOBS = 64          # finished load jobs remembered (for status) per master
_JOB_IDLE = 3600.0      # a running job nobody asked about for this long is dropped
_JOB_CHECK = 5.0        # a running job nobody polls is asked about this often
_TENANT_LOADS = 8       # loads one tenant namespace runs at once
_WALK_SECONDS = 120.0   # one request's walk over listings, at most
_TENANT_RULES = 1000    # pins and TTLs one tenant namespace may have


class DataOps:
    """Mixed into Master (actor.py): uses its core, blocks, _lock, listings, _target,
    _commit, _worker_handle and config."""

    def _init_dataops(self) -> None:
        self._jobs: dict[str, dict] = {}
        self._applied: dict[str, int] = {}           # worker id -> last report seq applied
        self._applied_cv = threading.Condition(self._lock)
        self._rules_cache: tuple[int, dict] | None = None
        self._rule_keys: dict[tuple, tuple[str, list[str]]] = {}   # rule -> (epoch, keys)
        self._ds_counts: dict[str, dict] = {}        # worker -> {"ns/name": [hits, misses]}
        self._metrics = None

    def _publish_metrics(self) -> None:
        """Per-dataset cached bytes and hit ratio to Ray's metrics (membership loop)."""
        if self._metrics is None:
            from ..metrics import MasterMetrics
            self._metrics = MasterMetrics()
        rows = []
        with self._lock:
            datasets = list(self.core.datasets.values())
            counts = list(self._ds_counts.values())
            for d in datasets:
                owner = f"{d.namespace}/{d.name}"
                hits = sum(c.get(owner, [0, 0])[0] for c in counts)
                misses = sum(c.get(owner, [0, 0])[1] for c in counts)
                rows.append({"namespace": d.namespace, "name": d.name, "hits": hits,
                             "misses": misses, "cached_bytes": self.blocks.cached_bytes(owner)})
        self._metrics.publish(rows)

    # -- helpers -----------------------------------------------------------------------
    def _files(self, ds: Dataset, path: str, refresh: bool = False,
               budget: int | None = None) -> list[plan.FileRef]:
        """The files under a path, sorted by path; at most `budget` (max_walk_files) of
        them: a larger walk is refused with a clear error, never done whole."""
        limit = self.config.max_walk_files if budget is None else budget
        deadline = time.monotonic() + _WALK_SECONDS
        out = []
        for f in plan.walk(lambda d: self.listings.listing(ds, d, refresh),
                           lambda p, v: self.listings.fid(ds, p, v), path):
            out.append(f)
            if len(out) > limit:
                raise InvalidRequest(f"fluid://{ds.name}/{path}: more than {limit} files; "
                                     "name a narrower path (or raise max_walk_files)")
            if len(out) % 1024 == 0 and time.monotonic() > deadline:
                raise InvalidRequest(f"fluid://{ds.name}/{path}: walking it took over "
                                     f"{_WALK_SECONDS:g}s; name a narrower path")
        out.sort(key=lambda f: f.path)
        return out

    def _holders(self):
        return lambda key: self.blocks.holders(key)

    def _alive_workers(self) -> list[dict]:
        with self._lock:
            return list(self.core.cluster_map()["workers"])

    def _call_workers(self, wids, method: str, *args, timeout: float = 60.0) -> dict:
        """Call `method` on each worker at once; worker id -> result (absent: no answer)."""
        refs = {}
        for wid in wids:
            handle = self._worker_handle(wid)
            if handle is not None:
                refs[wid] = getattr(handle, method).remote(*args)
        out = {}
        for wid, ref in refs.items():
            try:
                out[wid] = ray.get(ref, timeout=timeout)
            except Exception as exc:  # noqa: BLE001 - a worker gone is reported, not fatal
                log.warning("worker %s: %s failed: %s", wid, method, exc)
        return out

    def _note_applied(self, wid: str, seq) -> None:
        """Called (under _lock) when a worker's report `seq` is in the block map."""
        if isinstance(seq, int):
            self._applied[wid] = max(seq, self._applied.get(wid, 0))
            self._applied_cv.notify_all()

    def _wait_applied(self, seqs: dict[str, int], timeout: float = 15.0) -> bool:
        """Wait until each worker's report `seq` has been applied (they beat at once)."""
        deadline = time.monotonic() + timeout
        with self._applied_cv:
            while any(self._applied.get(w, 0) < s for w, s in seqs.items()
                      if w in self.core.workers):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._applied_cv.wait(left)
        return True

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
        cap = self.config.max_load_jobs if ns == "default" else _TENANT_LOADS
        if mine >= cap or len(running) >= self.config.max_load_jobs:
            raise Unavailable(f"{mine} loads of this namespace ({len(running)} in all) are "
                              f"running (at most {cap}, and {self.config.max_load_jobs} in "
                              "all); wait for one, or cancel one")
        files = self._files(ds, path, refresh=True)
        workers = self._alive_workers()
        p = plan.plan_load(files, workers, ds.selector, replicas, self.config.block_size,
                           self._holders())          # no master lock: heartbeats go on
        job = secrets.token_hex(8)
        record = {"job": job, "ns": ns, "ds": ds.name, "path": path, "files": p.files,
                  "blocks": p.blocks, "bytes": p.bytes, "cached_bytes": p.cached_bytes,
                  "per_file": p.blocks_per_file, "sizes": p.sizes,
                  "workers": sorted(p.items), "started": time.time(),
                  "state": "running" if p.items else "done", "polled": time.monotonic()}
        accepted = self._call_workers(p.items, "load_start", job, ns, ds.name,
                                      self.config.load_concurrency, timeout=30)
        for wid in p.items:      # handed its part separately: the items can be large
            if wid in accepted:
                self._call_workers([wid], "load_items", job, p.items[wid], timeout=60)
        missing = set(p.items) - set(accepted)
        if missing:
            self._call_workers(accepted, "load_cancel", job)
            raise Unavailable(f"workers {sorted(missing)} did not take their part of the "
                              "load; try again")
        with self._lock:
            self._jobs[job] = record
            for old in sorted(self._jobs, key=lambda j: self._jobs[j]["started"])[:-_MAX_JOBS]:
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
        parts = self._call_workers(record["workers"], "load_progress", record["job"],
                                   timeout=10)
        if record["state"] == "running" and record["workers"]:
            states = [parts.get(w, {}).get("state", "lost") for w in record["workers"]]
            if all(s != "running" for s in states):
                seqs = {w: parts[w]["seq"] for w in record["workers"] if w in parts}
                if self._wait_applied(seqs, timeout=0.5 if poll else 15):
                    record["state"] = ("cancelled" if "cancelled" in states else
                                       "failed" if any(parts.get(w, {}).get("failed") or
                                                       s == "lost" for w, s in
                                                       zip(record["workers"], states))
                                       else "done")
                    record["final"] = {w: dict(v, by_file={}) for w, v in parts.items()}
                    record["final_files"] = self._files_done(record, parts)
        elif not record["workers"]:
            record["state"] = "done"
        return self._public_job(record, parts)

    def op_load_cancel(self, ns: str, args: dict) -> dict:
        record = self._job(ns, args)
        self._call_workers(record["workers"], "load_cancel", record["job"], timeout=10)
        return self.op_load_status(ns, {"job": record["job"]})

    def _prune_jobs(self, now: float) -> None:
        """Running jobs nobody asked about lately are asked about here (so a finished
        one stops counting as running although no one polls it); those nobody asked
        about for an hour are dropped (their workers' parts end on their own)."""
        with self._lock:
            for job in [j for j, r in self._jobs.items()
                        if r["state"] == "running" and now - r.get("polled", now) > _JOB_IDLE]:
                del self._jobs[job]
            quiet = [r for r in self._jobs.values() if r["state"] == "running" and
                     now - r.get("seen", r["polled"]) > _JOB_CHECK]
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
        keys = plan.keys(self._files(ds, path), self.config.block_size)
        return self._free(keys, bool(args.get("force")))

    def _free(self, keys_or_map, force: bool) -> dict:
        if isinstance(keys_or_map, dict):
            calls = keys_or_map
        else:
            calls = {w["id"]: keys_or_map for w in self._alive_workers()}
        res = {}
        for wid, keys in calls.items():
            res.update(self._call_workers([wid], "free", keys, force, timeout=60))
        self._wait_applied({w: r["seq"] for w, r in res.items()})
        return {"freed_blocks": sum(r["blocks"] for r in res.values()),
                "freed_bytes": sum(r["bytes"] for r in res.values()),
                "pinned_blocks": sum(r["pinned"] for r in res.values())}

    # -- pin, unpin, ttl -----------------------------------------------------------------
    def op_pin(self, ns: str, args: dict) -> dict:
        return self._rule(ns, args, "pin")

    def op_unpin(self, ns: str, args: dict) -> dict:
        return self._rule(ns, args, "unpin")

    def op_ttl(self, ns: str, args: dict) -> dict:
        """Drop a path's cached blocks `seconds` from now (None: remove the TTL)."""
        seconds = args.get("seconds")
        if seconds is not None and (not isinstance(seconds, (int, float)) or
                                    isinstance(seconds, bool) or seconds < 0):
            raise InvalidRequest("ttl needs a duration of 0 seconds or more")
        return self._rule(ns, args, "ttl" if seconds is not None else "ttl_rm",
                          None if seconds is None else time.time() + seconds)

    def _rule(self, ns: str, args: dict, op: str, deadline: float | None = None) -> dict:
        ds, path = self._target(ns, args)
        files = self._files(ds, path)            # the path must exist: NotFound otherwise
        if op in ("pin", "ttl") and ns != "default":
            with self._lock:
                rules = self.core.rules(ns)
            if len(rules["pins"]) + len(rules["ttls"]) >= _TENANT_RULES:
                raise InvalidRequest(f"namespace {ns} has {_TENANT_RULES} pins and TTLs "
                                     "already (the most a tenant may have)")
        rec = {"op": op, "ns": ns, "ds": ds.name, "path": path}
        if deadline is not None:
            rec["deadline"] = deadline
        with self._lock:
            self._commit(rec)
        self._push_rules()
        return {"path": f"fluid://{ds.name}/{path}".rstrip("/"), "files": len(files),
                "rule": op, **({"deadline": deadline} if deadline is not None else {})}

    def _push_rules(self) -> None:
        rules = self.rules_for_worker()
        self._call_workers([w["id"] for w in self._alive_workers()], "apply_rules", rules)

    def rules_for_worker(self) -> dict:
        """The pins and TTLs as block keys: {"version", "pin": [key], "ttl": [[key, t]]}."""
        now = time.time()
        with self._lock:
            expired = self.core.expired_ttls(now, _TTL_GRACE)
            for ns, ds, path in expired:
                self._commit({"op": "ttl_rm", "ns": ns, "ds": ds, "path": path})
            version = self.core.rules_version
            if self._rules_cache is not None and self._rules_cache[0] == version:
                return self._rules_cache[1]
            rules = self.core.rules()
        pins: set[str] = set()
        ttls: dict[str, float] = {}
        live = set()
        for kind, rows in (("pin", rules["pins"]), ("ttl", rules["ttls"])):
            for row in rows:
                rule = (kind, *row[:3])
                live.add(rule)
                for key in self._rule_keys_of(rule):
                    if kind == "pin":
                        pins.add(key)
                    else:
                        ttls[key] = min(row[3], ttls.get(key, row[3]))
        for gone in set(self._rule_keys) - live:
            del self._rule_keys[gone]
        out = {"version": version, "pin": sorted(pins), "ttl": sorted(ttls.items())}
        with self._lock:
            self._rules_cache = (version, out)
        return out

    def _rule_keys_of(self, rule: tuple) -> list[str]:
        """The block keys a rule covers, walked once (bounded like every walk) and kept
        while its dataset's metadata epoch stays: a new rule costs its own walk, not a
        walk of every rule."""
        kind, ns, name, path = rule
        try:
            with self._lock:
                ds = self.core.dataset(ns, name)
            epoch = self.listings.epoch(ds)
            hit = self._rule_keys.get(rule)
            if hit is not None and hit[0] == epoch:
                return hit[1]
            keys = plan.keys(self._files(ds, path), self.config.block_size)
        except (NotFound, OSError) as exc:              # gone from the store: no keys
            log.warning("rule %s on %s/%s: %s", kind, name, path, exc)
            return []
        self._rule_keys[rule] = (epoch, keys)
        return keys

    def op_rules(self, ns: str, args: dict) -> dict:
        """A page of the namespace's pins and TTLs (of one dataset with `ds`):
        {"items": [[kind, dataset, path, deadline or None]], "next"}."""
        limit = paging.check_cursor(args.get("after"), args.get("limit", paging.PAGE_ITEMS))
        only = args.get("ds")
        with self._lock:
            rules = self.core.rules(ns)
        rows = sorted([["pin", d, p, None] for _, d, p in rules["pins"]] +
                      [["ttl", d, p, t] for _, d, p, t in rules["ttls"]])
        rows = [r for r in rows if only in (None, r[1])]
        items, nxt = paging.page(rows, lambda r: r[:3], args.get("after"), limit)
        return {"items": items, "next": nxt}

    # -- du ----------------------------------------------------------------------------
    def op_du(self, ns: str, args: dict) -> dict:
        """Files, total bytes and cached bytes under a path (a block counts once however
        many copies it has); per tier on request. With `per_file`, the cached bytes of a
        page of files (`after`, `limit`) instead: {"cached_by_file", "next"}."""
        ds, path = self._target(ns, args)
        files = self._files(ds, path)
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
            for res in self._call_workers([w["id"] for w in self._alive_workers()],
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
                files = self._files(ds, path, budget=self.config.max_walk_files - walked)
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

    def _free_owner(self, owner: str) -> None:
        """A removed dataset's blocks, freed on every worker that holds them."""
        per = self.blocks.keys_of_owner(owner)
        if per:
            self._free(per, force=True)


def worker_handle(handles: dict, wid: str):
    handle = handles.get(wid)
    if handle is None and ray.is_initialized():      # never start Ray just to look
        try:
            handle = ray.get_actor(names.worker_actor(wid), namespace=names.RAY_NAMESPACE)
        except ValueError:
            return None
    return handle
