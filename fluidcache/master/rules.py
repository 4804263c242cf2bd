"""The master's data rules: pin, unpin and TTL of paths, and what workers get of them.

Pins and TTLs are journaled as path rules (through the injected `commit`); each worker
gets them as block keys (after a change at once, after a restart of either side through
its heartbeat). A rule's keys are walked once and kept while its dataset's metadata
epoch stays. An expired TTL rule is retired `rule_grace` seconds after its deadline.
Owns: checking rule requests, a tenant's share of rules (tenant_rules), the rules as
block keys (cached per rules version).
Never: drop or pin a block itself (the workers do), or take the master lock while
walking.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, NamedTuple

from .. import paging
from ..config import Config
from ..errors import InvalidRequest, NotFound
from . import plan
from .catalog import target
from .core import MasterCore
from .listings import Listings
from .membership import Membership

log = logging.getLogger(__name__)


class RuleKeys(NamedTuple):
    epoch: str             # the dataset's metadata epoch they were walked at
    keys: list[str]


class WorkerRules(NamedTuple):
    version: int           # the core's rules version they were made from
    reply: dict            # {"version", "pin": [key], "ttl": [[key, deadline]]}


class Rules:
    def __init__(self, core: MasterCore, lock: threading.RLock, listings: Listings,
                 members: Membership, config: Config, commit: Callable[[dict], None],
                 files: Callable[..., list]) -> None:
        self.core, self._lock, self.listings, self.members = core, lock, listings, members
        self.config, self._commit, self._files = config, commit, files
        self._cache: WorkerRules | None = None
        self._rule_keys: dict[tuple, RuleKeys] = {}      # (kind, ns, ds, path) -> keys

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
        ds, path = target(self.core, self._lock, ns, args)
        files = self._files(ds, path)            # the path must exist: NotFound otherwise
        if op in ("pin", "ttl") and ns != "default":
            with self._lock:
                rules = self.core.rules(ns)
            if len(rules["pins"]) + len(rules["ttls"]) >= self.config.tenant_rules:
                raise InvalidRequest(f"namespace {ns} has {self.config.tenant_rules} pins "
                                     "and TTLs already (the most a tenant may have)")
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
        self.members.call([w["id"] for w in self.members.alive()], "apply_rules", rules)

    def rules_for_worker(self) -> dict:
        """The pins and TTLs as block keys: {"version", "pin": [key], "ttl": [[key, t]]}."""
        now = time.time()
        with self._lock:
            expired = self.core.expired_ttls(now, self.config.rule_grace)
            for ns, ds, path in expired:
                self._commit({"op": "ttl_rm", "ns": ns, "ds": ds, "path": path})
            version = self.core.rules_version
            if self._cache is not None and self._cache.version == version:
                return self._cache.reply
            rules = self.core.rules()
        pins: set[str] = set()
        ttls: dict[str, float] = {}
        live = set()
        for ns, name, path in rules["pins"]:
            live.add(("pin", ns, name, path))
            pins.update(self._rule_keys_of(("pin", ns, name, path)))
        for ns, name, path, deadline in rules["ttls"]:
            live.add(("ttl", ns, name, path))
            for key in self._rule_keys_of(("ttl", ns, name, path)):
                ttls[key] = min(deadline, ttls.get(key, deadline))
        for gone in set(self._rule_keys) - live:
            del self._rule_keys[gone]
        out = {"version": version, "pin": sorted(pins), "ttl": sorted(ttls.items())}
        with self._lock:
            self._cache = WorkerRules(version, out)
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
            if hit is not None and hit.epoch == epoch:
                return hit.keys
            keys = plan.keys(self._files(ds, path), self.config.block_size)
        except (NotFound, OSError) as exc:              # gone from the store: no keys
            log.warning("rule %s on %s/%s: %s", kind, name, path, exc)
            return []
        self._rule_keys[rule] = RuleKeys(epoch, keys)
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

