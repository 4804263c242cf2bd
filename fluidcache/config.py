"""One typed configuration, read once at the edge.

Owns: the frozen `Config` dataclass and its sources, in order of precedence:
defaults < config file (JSON, `FLUIDCACHE_CONFIG` or `--config`) < environment
(`FLUIDCACHE_*`) < explicit overrides (CLI flags). Also size parsing (`512MiB`).
Never: be read by a core module. Shells (CLI, actors, the fsspec class) read it and pass
plain values inward.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidRequest

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """`4MiB` -> 4194304. Accepts B, KiB, MiB, GiB, TiB, KB, MB, GB, TB (any case)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise InvalidRequest(f"size must not be negative: {text}")
        return text
    m = _SIZE_RE.match(str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise InvalidRequest(
            f"bad size {text!r}: use a number with B, KiB, MiB, GiB, KB, MB or GB, e.g. 512MiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | float) -> float | None:
    """`90`, `90s`, `5m`, `1h`, `2d` -> seconds; `never` -> None."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise InvalidRequest(f"duration must not be negative: {text}")
        return float(text)
    if str(text).strip().lower() == "never":
        return None
    m = _DURATION_RE.match(str(text).lower())
    if not m:
        raise InvalidRequest(f"bad duration {text!r}: use seconds or a number with s, m, h "
                             "or d (e.g. 90s, 10m, 2h), or never")
    return float(m.group(1)) * _SECONDS[m.group(2) or "s"]


def format_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def default_home() -> Path:
    """Where `fluidcache start` keeps its discovery file and, by default, its SSD tier."""
    env = os.environ.get("FLUIDCACHE_HOME")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fluidcache"


@dataclass(frozen=True, slots=True)
class TierConfig:
    """One tier level: `medium` is MEM, SSD or HDD; `path` a directory; `quota` bytes."""

    medium: str
    path: str
    quota: int
    high: float = 0.95
    low: float = 0.7

    def __post_init__(self) -> None:
        if self.medium not in ("MEM", "SSD", "HDD"):
            raise InvalidRequest(f"tier medium must be MEM, SSD or HDD, not {self.medium!r}")
        if self.quota <= 0:
            raise InvalidRequest(f"tier {self.path}: quota must be positive")
        if not 0 < self.low <= self.high <= 1:
            raise InvalidRequest(f"tier {self.path}: need 0 < low <= high <= 1")


def parse_ssd(spec: str, medium: str = "SSD") -> TierConfig:
    """`/mnt/nvme/fc:20GiB` -> TierConfig('SSD', '/mnt/nvme/fc', 20 GiB)."""
    path, sep, size = spec.rpartition(":")
    if not sep or not path:
        raise InvalidRequest(f"bad tier {spec!r}: use PATH:SIZE, e.g. /mnt/nvme/fluidcache:20GiB")
    return TierConfig(medium, os.path.abspath(os.path.expanduser(path)), parse_size(size))


def _default_tiers() -> tuple[TierConfig, ...]:
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else os.path.join(str(default_home()), "mem")
    return (
        TierConfig("MEM", os.path.join(shm, f"fluidcache-{os.getuid()}"), 1024**3),
        TierConfig("SSD", os.path.join(str(default_home()), "ssd"), 10 * 1024**3),
    )


@dataclass(frozen=True, slots=True)
class Config:
    block_size: int = 4 * 1024**2
    tiers: tuple[TierConfig, ...] = field(default_factory=_default_tiers)
    eviction: str = "lru"
    promote: bool = True            # a hit in a lower tier moves the block up when there is room
    host: str = "127.0.0.1"
    master_port: int = 0            # 0: any free port
    worker_port: int = 0
    # serving processes per worker answering reads of cached blocks (worker/serve.py):
    # -1 one per core (at most 4); 0 none (the worker's own server answers every read)
    serve_processes: int = -1
    serve_port: int = 0             # their shared port (0: any free port)
    serve_hung_after: float = 15.0  # one silent this long (they report each 0.5 s): killed
    max_frame: int = 1024**2        # largest header frame any server reads
    max_data: int = 64 * 1024**2    # largest raw payload any peer reads
    request_timeout: float = 60.0   # a server's handler of one request, at most
    # what one peer may hold on a server (service.Limits): slots, and how long a
    # connection may stay silent, take to send its first frame, or take over one frame
    max_connections: int = 1024
    idle_timeout: float = 300.0
    first_frame_timeout: float = 10.0
    frame_timeout: float = 10.0
    sync_interval: float = 60.0     # seconds a listing stays fresh
    heartbeat_interval: float = 2.0
    journal_dir: str | None = None  # where the master journals datasets and tokens
    # what namespaces other than `default` may mount (never file://: the nodes' own
    # disks); tenants.py knows the options of s3 and https only
    tenant_protocols: tuple = ("s3", "s3a", "https")
    tenant_requests: int = 4        # master requests one tenant namespace runs at once
    tenant_datasets: int = 1000     # datasets one tenant namespace may have
    max_walk_files: int = 2_000_000  # files one request may walk (load, du, free, locate)
    node_selector: dict = field(default_factory=dict)  # nodes that get a worker (labels,
                                                       # resource:NAME); empty: every node
    listing_cache_entries: int = 2_000_000  # listed entries the master keeps (~200 B each)
    max_dir_entries: int = 1_000_000        # one directory listed larger is refused
    max_load_jobs: int = 64         # load jobs a master runs at once (more are refused)
    fetch_threads: int = 16         # under-store fetches in flight per worker
    load_concurrency: int = 16      # blocks a worker loads at once for one `load` job
    cluster_id: str = ""            # set by the master: whose blocks the tiers may hold
    worker_secret: str = ""         # set by the master: what its workers show it
    tier_group_access: bool = False  # tiers 0750/0640 (app pods sharing an fsGroup read
                                     # them), else 0700/0600: only this user
    tier_trust_parents: bool = False  # a container's own volumes: the directories above a
                                      # tier are not checked for other local users
    # -- the master's rooms
    master_threads: int = 16        # request threads; 4 of them are always the admin's
    listing_keep: float = 5.0       # "always" still keeps a listing this long (to page it)
    rule_grace: float = 60.0        # an expired TTL rule is retired this long after it
    jobs_kept: int = 64             # finished load jobs remembered for their progress
    job_idle: float = 3600.0        # a running job nobody asked about this long is dropped
    job_check: float = 5.0          # a running job nobody polls is asked about this often
    tenant_loads: int = 8           # loads one tenant namespace runs at once
    tenant_rules: int = 1000        # pins and TTLs one tenant namespace may have
    walk_seconds: float = 120.0     # one request's walk over listings, at most
    # -- elasticity (master/rebalance.py, worker/peers.py)
    rebalance: bool = True          # blocks follow their owners when workers come and go
    rebalance_rate: int = 256 * 1024**2   # bytes/s one worker pulls from its peers, at most
    rebalance_batch: int = 32       # blocks in one move order to a worker
    rebalance_grace: float = 30.0   # workers ask for a block's holders on a miss this long
                                    # after the last move (clients' maps lag: map_ttl)
    # -- the worker's rooms
    record_ttl: float = 5.0         # a worker trusts a dataset record this long
    records_kept: int = 1024        # dataset records a worker keeps
    mounts_kept: int = 256          # opened mounts a worker keeps
    prefetch_max: int = 64          # prefetch hints being filled at once; more are dropped
    stage_bytes: int = 256 * 1024**2   # prefetched blocks no tier took, kept until read
    # -- writes (worker/writes.py)
    write_chunk: int = 8 * 1024**2  # largest payload of one write request
    write_sessions: int = 64        # files open for writing per worker (a namespace: half)
    write_idle: float = 300.0       # an open write silent this long is aborted
    write_threads: int = 8          # under-store writes in flight per worker
    write_part: int = 0             # S3 upload part size (0: 16 MiB; at least 5 MiB)
    write_parallel: int = 4         # S3 parts of one file in flight at once
    write_spool: str = ""           # cache-through's spool directory ("": the system's)
    write_journal: int = 0          # bytes kept by async-through/must-cache per worker
                                    # (0: the quota of the lowest tier, where they live)

    def __post_init__(self) -> None:
        if self.eviction not in ("lru", "lfu", "fill-once"):
            raise InvalidRequest(f"eviction must be lru, lfu or fill-once, not {self.eviction!r}")
        if self.block_size < 4096 or self.block_size > self.max_data:
            raise InvalidRequest(
                f"block size must be between 4KiB and {format_size(self.max_data)}")
        if not self.tiers:
            raise InvalidRequest("at least one tier is needed")
        if not 64 * 1024 <= self.write_chunk <= self.max_data:
            raise InvalidRequest(f"write_chunk must be between 64KiB and "
                                 f"{format_size(self.max_data)}")
        if self.write_part and not 5 * 1024**2 <= self.write_part <= 5 * 1024**3:
            raise InvalidRequest("write_part must be 0 (16 MiB) or 5MiB-5GiB (S3's limits)")
        if not 1 <= self.write_parallel <= 64:
            raise InvalidRequest("write_parallel must be 1-64")
        if self.rebalance_rate < 1024**2 or not 1 <= self.rebalance_batch <= 1024:
            raise InvalidRequest("rebalance_rate must be at least 1MiB (per second) and "
                                 "rebalance_batch 1-1024")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidRequest(f"unknown config keys: {', '.join(sorted(unknown))}")
        data = dict(data)
        for key in ("block_size", "max_frame", "max_data", "write_chunk", "write_part",
                    "write_journal", "rebalance_rate", "stage_bytes"):
            if key in data:
                data[key] = parse_size(data[key])
        if "tenant_protocols" in data:
            data["tenant_protocols"] = tuple(data["tenant_protocols"])
        if "tiers" in data:
            tiers = []
            for t in data["tiers"]:
                t = dict(t)
                t["quota"] = parse_size(t["quota"])
                t["path"] = os.path.expanduser(t["path"])
                tiers.append(TierConfig(**t))
            data["tiers"] = tuple(tiers)
        return cls(**data)


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """What a client process may tune (the fsspec class's keyword arguments override
    them; FLUIDCACHE_CONNECT_TIMEOUT, FLUIDCACHE_REQUEST_TIMEOUT and
    FLUIDCACHE_FAILOVER_TIMEOUT set them from the environment)."""

    connect_timeout: float = 5.0    # one connection to a master or worker
    request_timeout: float = 60.0   # one request's reply
    serve_timeout: float = 5.0      # a serving process silent this long: ask the worker
    failover_timeout: float = 60.0  # a read waits this long for a worker to serve it
    master_retry: float = 30.0      # a call to a restarting master is retried this long
    listing_ttl: float = 60.0       # a listing a client holds is fresh this long
    map_ttl: float = 10.0           # the cluster map (workers, datasets) is fresh this long
    flush_every: float = 0.5        # short-circuit hits are reported this often
    flush_batch: int = 512          # ... or once this many are waiting
    pending_max: int = 65536        # short-circuit hits waiting to be reported, at most
    fanout: int = 8                 # blocks of one large read fetched at once
    readahead_budget: int = 256 * 1024**2   # bytes all open files of a process read ahead
    max_data: int = 64 * 1024**2    # largest payload the client reads

    def __post_init__(self) -> None:
        if isinstance(self.fanout, bool) or not isinstance(self.fanout, int) \
                or not 1 <= self.fanout <= 256:
            raise InvalidRequest("fanout (blocks of one read fetched at once) must be "
                                 "1-256")

    @classmethod
    def from_env(cls, env: dict | None = None, **overrides) -> "ClientSettings":
        env = os.environ if env is None else env
        data: dict = {}
        for key in ("connect_timeout", "request_timeout", "failover_timeout",
                    "serve_timeout"):
            var = f"FLUIDCACHE_{key.upper()}"
            if var in env:
                try:
                    data[key] = float(env[var])
                except ValueError:
                    raise InvalidRequest(f"{var} must be a number of seconds") from None
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


_ENV = {
    "FLUIDCACHE_BLOCK_SIZE": "block_size",
    "FLUIDCACHE_EVICTION": "eviction",
    "FLUIDCACHE_PROMOTE": "promote",
    "FLUIDCACHE_HOST": "host",
    "FLUIDCACHE_MASTER_PORT": "master_port",
    "FLUIDCACHE_REQUEST_TIMEOUT": "request_timeout",
    "FLUIDCACHE_REBALANCE": "rebalance",
}


def load(path: str | os.PathLike | None = None, env: dict | None = None, **overrides) -> Config:
    """Defaults, then the JSON file, then FLUIDCACHE_* variables, then `overrides`."""
    env = os.environ if env is None else env
    data: dict = {}
    path = path or env.get("FLUIDCACHE_CONFIG")
    if path:
        try:
            data.update(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise InvalidRequest(f"cannot read config file {path}: {exc}") from None
    for var, key in _ENV.items():
        if var in env:
            value = env[var]
            kind = Config.__dataclass_fields__[key].type
            if kind == "bool":
                data[key] = value.lower() in ("1", "true", "yes", "on")
            elif kind == "int" and key != "block_size":
                data[key] = int(value)
            else:
                data[key] = float(value) if kind == "float" else value
    data.update({k: v for k, v in overrides.items() if v is not None})
    return Config.from_dict(data)
