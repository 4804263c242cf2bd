"""The master's state: namespaces and tokens, datasets, workers, cached listings and
each dataset's metadata epoch.

A dataset's metadata epoch changes whenever a listing of it is found changed (a refresh,
an expiry, a file listed again after a stale read). Replies carry it, and clients drop
their cached listings of the dataset when it moves: a refresh reaches every client.
Epochs are `incarnation.n` with `n` from one counter for all datasets, so neither a
restarted master nor a dataset made again under an old name repeats an epoch.
Pure: every method takes the time it needs as an argument; listings are fetched by the
shell (listings.py) and handed in. Tokens are compared in constant time.
Never: touch the under store, Ray or sockets.
"""
from __future__ import annotations

import hmac
from collections import OrderedDict
from typing import NamedTuple

from ..errors import AccessDenied, AlreadyExists, NotFound
from ..dataset import Dataset
from .tenants import Grant


MAX_LISTED = 2_000_000        # entries in all cached listings (~200 bytes each)
MAX_DIGESTS = 1_000_000       # digests of dropped listings (~150 bytes each)


class Held(NamedTuple):
    expires: float          # when it must be listed again (the shell's clock)
    listing: object         # a DirListing
    started: float          # when its fetch began: an older one never replaces it


class Gone(NamedTuple):
    digest: int | None      # of the listing dropped; None: the directory was found gone
    started: float          # listings whose fetch began before this are older news


def _digest(listing) -> int:
    return hash((listing.names, listing.kinds, bytes(listing.sizes), listing.versions))


class MasterCore:
    def __init__(self, incarnation: str = "0", max_listed: int = MAX_LISTED) -> None:
        self.incarnation = incarnation      # this run of the master (epochs, weak versions)
        self.cluster_id = ""                # journaled: tier directories carry it
        self.worker_secret = ""             # journaled: what workers show the master
        self.tokens: dict[str, str] = {}
        self.grants: dict[str, Grant] = {}      # what each tenant namespace may mount
        self.restore_errors: list[str] = []     # snapshot parts that could not be restored
        self.datasets: dict[tuple[str, str], Dataset] = {}
        self.workers: dict[str, dict] = {}
        self.map_version = 0
        # data rules (journaled): (ns, dataset) -> {path: True} pins, {path: deadline} TTLs
        self.pins: dict[tuple[str, str], dict[str, bool]] = {}
        self.ttls: dict[tuple[str, str], dict[str, float]] = {}
        self.rules_version = 0
        # cached listings, least recently used first, holding at most `max_listed`
        # entries in all; a listing dropped (expired or evicted) leaves a digest, so one
        # listed again is still known to have changed or not
        self._listings: OrderedDict[tuple[str, str, str], Held] = OrderedDict()
        # what is known of a listing no longer held: its digest (None when it was found
        # gone) and when that knowledge began (an older fetch never replaces it)
        self._gone: OrderedDict[tuple[str, str, str], Gone] = OrderedDict()
        self.listed = 0
        self.max_listed = max_listed
        self._epochs: dict[tuple[str, str], int] = {}
        self._epoch_seq = 0

    # -- namespaces ------------------------------------------------------------
    def authorize(self, ns: str | None, token: str | None) -> str:
        """The namespace, if `token` is its token; AccessDenied otherwise."""
        expected = self.tokens.get(ns or "")
        # compare against something even for an unknown namespace: constant time either way
        ok = hmac.compare_digest((token or "").encode(), (expected or "\0" * 43).encode())
        if not ok or expected is None:
            raise AccessDenied(f"wrong or missing token for namespace {ns!r} "
                               "(set FLUIDCACHE_TOKEN and FLUIDCACHE_NAMESPACE)")
        return ns

    # -- datasets --------------------------------------------------------------
    def check_new(self, ds: Dataset) -> None:
        """Raise unless `ds` may be added: its namespace exists and its name is free."""
        if ds.namespace not in self.tokens:
            raise NotFound(f"namespace {ds.namespace!r} does not exist")
        if (ds.namespace, ds.name) in self.datasets:
            raise AlreadyExists(f"dataset {ds.name} already exists in namespace {ds.namespace}")

    def dataset(self, ns: str, name: str) -> Dataset:
        ds = self.datasets.get((ns, name))
        if ds is None:
            raise NotFound(f"no dataset {name!r} in namespace {ns!r} "
                           "(see `fluidcache dataset ls`)")
        return ds

    def in_namespace(self, ns: str) -> list[Dataset]:
        return sorted((d for (n, _), d in self.datasets.items() if n == ns),
                      key=lambda d: d.name)

    # -- the journal's view: what cannot be rebuilt ----------------------------
    def state(self) -> dict:
        return {"cluster_id": self.cluster_id, "worker_secret": self.worker_secret,
                "tokens": dict(self.tokens),
                "grants": {ns: g.to_record() for ns, g in self.grants.items()},
                "datasets": [d.to_record() for d in self.datasets.values()],
                "pins": [[ns, ds, p] for (ns, ds), paths in self.pins.items() for p in paths],
                "ttls": [[ns, ds, p, t] for (ns, ds), paths in self.ttls.items()
                         for p, t in paths.items()]}

    def restore(self, state: dict | None) -> None:
        self.cluster_id = (state or {}).get("cluster_id") or self.cluster_id
        self.worker_secret = (state or {}).get("worker_secret") or self.worker_secret
        for ns, token in (state or {}).get("tokens", {}).items():
            self.tokens[ns] = token
        for ns, g in (state or {}).get("grants", {}).items():
            self.grants[ns] = Grant.from_record(g)
        for rec in (state or {}).get("datasets", []):
            try:
                ds = Dataset.from_record(rec)
            except Exception as exc:  # noqa: BLE001 - one bad record never loses the rest
                self.restore_errors.append(f"dataset {str(rec)[:80]}: {exc}")
                continue
            self.datasets[(ds.namespace, ds.name)] = ds
        for ns, ds, p in (state or {}).get("pins", []):
            self.pins.setdefault((ns, ds), {})[p] = True
        for ns, ds, p, t in (state or {}).get("ttls", []):
            self.ttls.setdefault((ns, ds), {})[p] = t
        self.rules_version += 1

    def apply(self, rec: dict | None) -> None:
        """Replay one journal record. Idempotent: a record already reflected in a
        snapshot (a crash between snapshot and log cut) changes nothing. A record that is
        not one (None: undecodable; an unknown op; bad fields) raises ValueError."""
        if not isinstance(rec, dict):
            raise ValueError("not a journal record")
        op = rec.get("op")
        if op == "cluster":
            self.cluster_id = self.cluster_id or rec["id"]
        elif op == "worker_secret":
            self.worker_secret = self.worker_secret or rec["secret"]
        elif op == "namespace":
            self.tokens.setdefault(rec["ns"], rec["token"])
        elif op == "grant":
            old = self.grants.get(rec["ns"], Grant())
            self.grants[rec["ns"]] = old.merged(Grant.from_record(rec))
        elif op == "dataset_add":
            ds = Dataset.from_record(rec["dataset"])
            self.datasets.setdefault((ds.namespace, ds.name), ds)
        elif op == "dataset_rm":
            self.datasets.pop((rec["ns"], rec["name"]), None)
            self.invalidate(rec["ns"], rec["name"])
            self.pins.pop((rec["ns"], rec["name"]), None)
            self.ttls.pop((rec["ns"], rec["name"]), None)
            self.rules_version += 1
        elif op in ("pin", "unpin", "ttl", "ttl_rm"):
            self._apply_rule(op, (rec["ns"], rec["ds"]), rec["path"], rec.get("deadline"))
        else:
            raise ValueError(f"unknown journal record op {str(op)[:40]!r}")

    def _apply_rule(self, op: str, key: tuple[str, str], path: str, deadline) -> None:
        if op == "pin":
            self.pins.setdefault(key, {})[path] = True
        elif op == "unpin":
            self.pins.get(key, {}).pop(path, None)
        elif op == "ttl":
            self.ttls.setdefault(key, {})[path] = float(deadline)
        else:
            self.ttls.get(key, {}).pop(path, None)
        for table in (self.pins, self.ttls):
            if key in table and not table[key]:
                del table[key]
        self.rules_version += 1

    def rules(self, ns: str | None = None) -> dict:
        """{"pins": [[ns, dataset, path]], "ttls": [[ns, dataset, path, deadline]]}, of
        one namespace or all."""
        return {"pins": sorted([n, d, p] for (n, d), ps in self.pins.items()
                               for p in ps if ns in (None, n)),
                "ttls": sorted([n, d, p, t] for (n, d), ps in self.ttls.items()
                               for p, t in ps.items() if ns in (None, n))}

    def expired_ttls(self, now: float, grace: float) -> list[tuple[str, str, str]]:
        """TTL rules whose deadline passed more than `grace` seconds ago (workers have
        dropped their blocks by then): the shell retires them through the journal."""
        return [(n, d, p) for (n, d), ps in self.ttls.items() for p, t in ps.items()
                if t + grace < now]

    # -- workers ---------------------------------------------------------------
    def register_worker(self, info: dict) -> int:
        old = self.workers.get(info["id"])
        if old != info:
            self.workers[info["id"]] = info
            self.map_version += 1
        return self.map_version

    def remove_worker(self, worker_id: str) -> None:
        if self.workers.pop(worker_id, None) is not None:
            self.map_version += 1

    def cluster_map(self) -> dict:
        return {"version": self.map_version,
                "workers": [self.workers[k] for k in sorted(self.workers)]}

    # -- listing cache ---------------------------------------------------------
    def listing(self, ns: str, name: str, path: str, now: float | None):
        """The cached listing of a directory; None when absent or expired at `now`
        (None: expired or not, as long as it is held)."""
        key = (ns, name, path)
        hit = self._listings.get(key)
        if hit is None or (now is not None and hit.expires <= now):
            return None
        self._listings.move_to_end(key)
        return hit.listing

    def store_listing(self, ns: str, name: str, path: str, listing, expires: float | None,
                      started: float) -> bool:
        """Keep a listing the shell began to fetch at `started` (`expires` None: keep the
        old deadline). One begun before what is known of the path now (the listing held,
        a refresh, the directory found gone, a listing dropped) is older news and is
        dropped: a slow listing never overwrites a refresh. Returns whether the stored
        listing differs from the one known before (held, or its digest); then the
        dataset's epoch moves. Listings used least recently go over `max_listed`."""
        key = (ns, name, path)
        old, gone = self._listings.get(key), self._gone.get(key)
        if (old is not None and old.started > started) or self._floor(key) > started:
            return False
        if old is not None:
            del self._listings[key]
            self.listed -= len(old.listing)
            changed = old.listing != listing
        else:
            self._gone.pop(key, None)
            changed = gone is not None and gone.digest != _digest(listing)
        if expires is None:
            expires = old.expires if old is not None else 0.0
        self._listings[key] = Held(expires, listing, started)
        self.listed += len(listing)
        while self.listed > self.max_listed and len(self._listings) > 1:
            self._drop(next(iter(self._listings)))
        if changed:
            self.bump_epoch(ns, name)
        return changed

    def refreshed(self, ns: str, name: str, path: str, at: float) -> None:
        """A file of directory `path` was asked for at `at` while its listing is not
        held: a listing of `path` begun before that is older news; clients may hold one,
        so the epoch moves."""
        key = (ns, name, path)
        gone = self._gone.get(key)
        if key not in self._listings:
            self._remember(key, Gone(gone.digest if gone else None,
                                     max(at, gone.started if gone else at)))
        self.bump_epoch(ns, name)

    def forget_listing(self, ns: str, name: str, path: str, at: float) -> bool:
        """A directory found gone at `at`: its listing (and those below it) go, and a
        listing of them begun before `at` is never stored; the epoch moves if any was
        held. Returns whether one was."""
        below = path + "/" if path else ""
        keys = {k for k in list(self._listings) + list(self._gone) if k[:2] == (ns, name)
                and (k[2] == path or k[2].startswith(below))} | {(ns, name, path)}
        held = False
        for key in keys:
            h = self._listings.pop(key, None)
            if h is not None:
                self.listed -= len(h.listing)
                held = True
            self._remember(key, Gone(None, at))
        if held:
            self.bump_epoch(ns, name)
        return held

    def held_below(self, ns: str, name: str, path: str) -> set[str]:
        """Paths at or below `path` whose listings are held, or remembered as dropped."""
        below = path + "/" if path else ""
        return {k[2] for table in (self._listings, self._gone) for k in table
                if k[:2] == (ns, name) and (k[2] == path or k[2].startswith(below))
                and not (table is self._gone and self._gone[k].digest is None)}

    def _floor(self, key) -> float:
        """When what is known of `key`'s directory began: the path's own record, and
        any directory above it found gone (a listing below it begun before then is
        older news)."""
        ns, name, path = key
        gone = self._gone.get(key)
        floor = gone.started if gone is not None else float("-inf")
        while path:
            path = path.rpartition("/")[0]
            up = self._gone.get((ns, name, path))
            if up is not None and up.digest is None:
                floor = max(floor, up.started)
        return floor

    def _remember(self, key, gone: Gone) -> None:
        self._gone[key] = gone
        self._gone.move_to_end(key)
        while len(self._gone) > MAX_DIGESTS:
            self._gone.popitem(last=False)

    def _drop(self, key) -> None:
        held = self._listings.pop(key)
        self.listed -= len(held.listing)
        self._remember(key, Gone(_digest(held.listing), held.started))

    def prune(self, now: float) -> int:
        """Drop the listings that expired before `now` (their digests stay); returns
        how many."""
        old = [k for k, held in self._listings.items() if held.expires <= now]
        for key in old:
            self._drop(key)
        return len(old)

    def listing_count(self) -> int:
        return len(self._listings)

    def invalidate(self, ns: str, name: str) -> None:
        for key in [k for k in self._listings if k[:2] == (ns, name)]:
            self.listed -= len(self._listings.pop(key).listing)
        for key in [k for k in self._gone if k[:2] == (ns, name)]:
            del self._gone[key]
        self._epochs.pop((ns, name), None)

    # -- metadata epochs -------------------------------------------------------
    def epoch(self, ns: str, name: str) -> str:
        n = self._epochs.get((ns, name))
        if n is None:
            self._epoch_seq += 1
            n = self._epochs[(ns, name)] = self._epoch_seq
        return f"{self.incarnation}.{n}"

    def bump_epoch(self, ns: str, name: str) -> str:
        self._epochs.pop((ns, name), None)
        return self.epoch(ns, name)
