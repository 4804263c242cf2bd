"""The master's catalog ops: namespaces and their grants, datasets, and the metadata
that clients ask for (`ls`, `info`, `epoch`).

Owns: checking these requests' arguments (a tenant's mounts against its grant and the
option allow-list, tenants.py), a tenant's share of datasets, and the records they
commit (namespace, grant, dataset_add, dataset_rm) through the injected `commit`.
Never: write the master's state but through `commit`, list an under store itself (the
listings room does), or call a worker (a removed dataset's blocks go through the
injected `free_owner`).
"""
from __future__ import annotations

import secrets
import threading
from typing import Callable, NamedTuple

from .. import paging
from ..config import Config
from ..dataset import Dataset, MountSpec, check_name, normalize
from ..errors import AccessDenied, AlreadyExists, InvalidRequest, NotFound
from ..understore import Mount
from . import tenants
from .blockmap import BlockMap
from .core import MasterCore
from .listings import PAGE, Listings


class Target(NamedTuple):
    ds: Dataset
    path: str          # normalized, relative to the dataset's root


def arg_str(args: dict, key: str, default: str | None = None) -> str:
    v = args.get(key, default)
    if not isinstance(v, str):
        raise InvalidRequest(f"argument {key!r} must be a string")
    return v


def target(core: MasterCore, lock: threading.RLock, ns: str, args: dict) -> Target:
    """The dataset (`ds`) and the path in it (`p`) that a request names."""
    with lock:
        ds = core.dataset(ns, arg_str(args, "ds"))
    return Target(ds, normalize(arg_str(args, "p", "")))


def grant_of(args: dict) -> tenants.Grant:
    return tenants.Grants(args.get("allow") or [], args.get("endpoints") or [],
                          bool(args.get("node_credentials", False))).grant()


class Catalog:
    def __init__(self, core: MasterCore, lock: threading.RLock, listings: Listings,
                 blocks: BlockMap, config: Config, commit: Callable[[dict], None],
                 free_owner: Callable[[str], None],
                 forget: Callable[[str, str], None] = lambda ns, name: None) -> None:
        """`free_owner(owner)`: a removed dataset's blocks go; `forget(ns, name)`: every
        worker drops its record of a removed dataset (a write open on it commits
        nothing)."""
        self.core, self._lock, self.listings, self.blocks = core, lock, listings, blocks
        self.config, self._commit, self._free_owner = config, commit, free_owner
        self._forget = forget

    # -- namespaces --------------------------------------------------------------------
    def op_namespace_create(self, ns: str, args: dict) -> dict:
        """A new namespace and its token, with what it may mount (`allow`: URL prefixes,
        `endpoints`, `node_credentials`). Only the `default` namespace (the cluster's
        administrator, who started it) may create namespaces and grant."""
        if ns != "default":
            raise AccessDenied("only the default namespace's token may create namespaces")
        name = check_name("namespace", arg_str(args, "name"))
        grant = grant_of(args)
        with self._lock:
            if name in self.core.tokens:
                raise AlreadyExists(f"namespace {name} already exists")
            self._commit({"op": "namespace", "ns": name, "token": secrets.token_urlsafe(32)})
            if grant.prefixes or grant.endpoints or grant.node_credentials:
                self._commit({"op": "grant", "ns": name, **grant.to_record()})
            return {"namespace": name, "token": self.core.tokens[name],
                    "grant": self.core.grants.get(name, tenants.Grant()).to_record()}

    def op_namespace_grant(self, ns: str, args: dict) -> dict:
        """Let a tenant namespace mount more (grants only add)."""
        if ns != "default":
            raise AccessDenied("only the default namespace's token may grant")
        name = arg_str(args, "name")
        grant = grant_of(args)
        with self._lock:
            if name not in self.core.tokens or name == "default":
                raise NotFound(f"no tenant namespace {name!r}")
            self._commit({"op": "grant", "ns": name, **grant.to_record()})
            return {"namespace": name, "grant": self.core.grants[name].to_record()}

    def op_namespace_show(self, ns: str, args: dict) -> dict:
        name = arg_str(args, "name", ns)
        if ns != "default" and name != ns:
            raise AccessDenied("a namespace sees only itself")
        with self._lock:
            if name not in self.core.tokens:
                raise NotFound(f"no namespace {name!r}")
            return {"namespace": name, "admin": name == "default",
                    "grant": self.core.grants.get(name, tenants.Grant()).to_record()}

    def op_namespaces(self, ns: str, args: dict) -> dict:
        """A page of namespace names: {"items", "next"}."""
        limit = paging.check_cursor(args.get("after"), args.get("limit", paging.PAGE_ITEMS))
        with self._lock:
            names = sorted(self.core.tokens) if ns == "default" else [ns]
        items, nxt = paging.page(names, lambda n: n, args.get("after"), limit)
        return {"items": items, "next": nxt}

    # -- datasets ----------------------------------------------------------------------
    def op_datasets(self, ns: str, args: dict) -> dict:
        """A page of the namespace's datasets: {"items", "next"}."""
        limit = paging.check_cursor(args.get("after"), args.get("limit", paging.PAGE_ITEMS))
        with self._lock:
            ds = [d.public() for d in self.core.in_namespace(ns)]
        items, nxt = paging.page(ds, lambda d: d["name"], args.get("after"), limit)
        return {"items": items, "next": nxt}

    def op_dataset_show(self, ns: str, args: dict) -> dict:
        """A dataset's public record, with how many pins and TTLs it has (the rules
        themselves come in pages from `rules`: this reply never grows with them)."""
        with self._lock:
            d = self.core.dataset(ns, arg_str(args, "name"))
            return dict(d.public(), pin_count=len(self.core.pins.get((ns, d.name), {})),
                        ttl_count=len(self.core.ttls.get((ns, d.name), {})))

    def op_dataset_create(self, ns: str, args: dict) -> dict:
        """A dataset over one or more mounts. Everything is checked before anything is
        opened: a tenant's mounts against its grant and the option allow-list
        (tenants.py), the admin's options as plain data; then each mount is opened once
        (not kept) to fail now rather than at the first read."""
        mounts = args.get("mounts")
        if not isinstance(mounts, list) or not mounts or len(mounts) > 64:
            raise InvalidRequest("dataset_create needs a list of 1-64 mounts")
        options = args.get("options") or {}
        if not isinstance(options, dict):
            raise InvalidRequest("options must be a map")
        write_mode = args.get("write_mode", "read-only")
        if not isinstance(write_mode, str):
            raise InvalidRequest("write_mode must be a string")
        with self._lock:
            grant = self.core.grants.get(ns)
        specs = []
        for m in mounts:
            if not (isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m)):
                raise InvalidRequest("each mount is [point, url]")
            if ns == "default":
                url, opts = m[1], dict(tenants.check_plain(options))
            else:
                url, opts = tenants.check_tenant(m[1], options, grant,
                                                 self.config.tenant_protocols)
            specs.append(MountSpec(normalize(m[0]), url, opts))
        ds = Dataset(arg_str(args, "name"), ns, tuple(specs), args.get("replicas", 1),
                     args.get("sync"), args.get("selector") or {}, write_mode,
                     args.get("routing") or "partitioned", uid=secrets.token_hex(8),
                     write_ttl=args.get("write_ttl"))
        tenants.check_plain(ds.to_record(), "the dataset")
        with self._lock:
            self.core.check_new(ds)
            self._check_share(ns)
        for spec in specs:  # fail now, not at the first read, if a mount cannot be opened
            try:
                Mount(spec.url, spec.options, self.config.max_dir_entries).info("")
            except NotFound:
                if ds.read_only:
                    raise           # (a dataset written to may start empty: its first
                                    # file makes the prefix)
        with self._lock:
            self.core.check_new(ds)
            self._check_share(ns)             # again: others may have been made meanwhile
            self._commit({"op": "dataset_add", "dataset": ds.to_record()})
        return ds.public()

    def _check_share(self, ns: str) -> None:
        if ns != "default" and len(self.core.in_namespace(ns)) >= self.config.tenant_datasets:
            raise InvalidRequest(f"namespace {ns} has {self.config.tenant_datasets} "
                                 "datasets already (the most a tenant may have)")

    def op_dataset_rm(self, ns: str, args: dict) -> dict:
        with self._lock:
            ds = self.core.dataset(ns, arg_str(args, "name"))
        self._free_owner(f"{ns}/{ds.name}")           # its cache goes with it
        with self._lock:
            self._commit({"op": "dataset_rm", "ns": ns, "name": ds.name})
            self.blocks.drop_owner(f"{ns}/{ds.name}")
        self.listings.forget(ns, ds.name)
        self._forget(ns, ds.name)
        return ds.public()

    def dataset_for_worker(self, ns: str, name: str) -> dict:
        """The full record (with under-store options) of a dataset, for workers only,
        with the scope its weak versions must carry."""
        with self._lock:
            ds = self.core.dataset(ns, name)
        return dict(ds.to_record(), weak_scope=self.listings.weak_scope(ds))

    # -- metadata ----------------------------------------------------------------------
    def op_ls(self, ns: str, args: dict) -> dict:
        """One page of a directory: {"entries": [...], "next": cursor or None, "epoch"}.
        A file lists as itself, as in other fsspec filesystems."""
        ds, path = target(self.core, self._lock, ns, args)
        epoch = self.listings.epoch(ds)      # before the listing: never newer than it
        page = self.listings.page(ds, path, args.get("after"),
                                  args.get("limit", PAGE), bool(args.get("refresh")))
        return dict(page, epoch=epoch)

    def op_info(self, ns: str, args: dict) -> dict:
        """{"entry": a file's or directory's info, "epoch": the dataset's epoch}."""
        ds, path = target(self.core, self._lock, ns, args)
        epoch = self.listings.epoch(ds)      # before the entry: never newer than it
        entry = self.listings.entry(ds, path, bool(args.get("refresh")))
        return {"entry": entry, "epoch": epoch}

    def op_epoch(self, ns: str, args: dict) -> dict:
        """The dataset's metadata epoch: when it moves, cached listings are stale."""
        with self._lock:
            ds = self.core.dataset(ns, arg_str(args, "ds"))
        return {"epoch": self.listings.epoch(ds)}
