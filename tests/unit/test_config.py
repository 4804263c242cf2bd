"""Typed configuration and its sources (fluidcache.config)."""
from __future__ import annotations

import json
import os

import pytest

from fluidcache.config import (ClientSettings, Config, TierConfig, format_size, load, parse_size,
                               parse_ssd)
from fluidcache.errors import InvalidRequest

KiB, MiB, GiB = 1024, 1024**2, 1024**3


@pytest.mark.parametrize("text, n", [
    ("0", 0), ("17", 17), (17, 17), (0, 0), ("17B", 17), ("17 b", 17),
    ("1KiB", KiB), ("4MiB", 4 * MiB), ("2GiB", 2 * GiB), ("1TiB", 1024**4),
    ("1kib", KiB), ("4mib", 4 * MiB), ("1.5KiB", 1536), (" 8 MiB ", 8 * MiB),
    ("1KB", 1000), ("5MB", 5_000_000), ("3GB", 3_000_000_000), ("2k", 2000), ("1gb", 10**9),
])
def test_parse_size(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("text", [
    "", "MiB", "12XB", "-1", "-1MiB", "1.5.2KiB", "1e3", "one", "1 Mi B", "0x10", -1, True,
    "4MiB\nextra",
])
def test_parse_size_rejects(text):
    with pytest.raises(InvalidRequest):
        parse_size(text)


def test_format_size():
    assert format_size(17) == "17 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(4 * MiB) == "4.0 MiB"
    assert format_size(3 * 1024**5) == "3072.0 TiB"


def test_parse_ssd():
    t = parse_ssd("/mnt/nvme/fc:20GiB")
    assert t == TierConfig("SSD", "/mnt/nvme/fc", 20 * GiB)
    assert parse_ssd("/d:1MiB", medium="HDD").medium == "HDD"
    assert parse_ssd("rel/dir:1MiB").path == os.path.abspath("rel/dir")
    assert parse_ssd("/a:b/c:1KiB").path == "/a:b/c"     # the last ':' splits


@pytest.mark.parametrize("spec", ["/mnt/nvme", ":20GiB", "/mnt/x:", "/mnt/x:lots", "/x:0"])
def test_parse_ssd_rejects(spec):
    with pytest.raises(InvalidRequest):
        parse_ssd(spec)


@pytest.mark.parametrize("kwargs", [
    dict(medium="RAM"), dict(quota=0), dict(quota=-5),
    dict(low=0.0), dict(low=0.9, high=0.8), dict(high=1.01), dict(low=-0.1),
])
def test_tier_validation(kwargs):
    base = dict(medium="SSD", path="/x", quota=1)
    with pytest.raises(InvalidRequest):
        TierConfig(**{**base, **kwargs})


def test_tier_watermarks_at_the_bounds_are_fine():
    assert TierConfig("MEM", "/x", 1, high=1.0, low=1.0).high == 1.0


@pytest.mark.parametrize("kwargs", [
    dict(eviction="mru"), dict(eviction="LRU"), dict(tiers=()),
    dict(block_size=4095), dict(block_size=65 * MiB), dict(block_size=2 * MiB, max_data=MiB),
])
def test_config_validation(kwargs):
    with pytest.raises(InvalidRequest):
        Config(**kwargs)


def test_config_accepts_every_policy_and_block_size_bounds():
    for ev in ("lru", "lfu", "fill-once"):
        assert Config(eviction=ev).eviction == ev
    assert Config(block_size=4096).block_size == 4096
    assert Config(block_size=64 * MiB).block_size == 64 * MiB


def test_dict_round_trip():
    for cfg in (Config(), Config(block_size=MiB, eviction="lfu", tiers=(
            TierConfig("MEM", "/dev/shm/x", GiB, 0.9, 0.5), TierConfig("HDD", "/d", 3 * GiB)))):
        assert Config.from_dict(cfg.to_dict()) == cfg
        assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg   # via a file


def test_from_dict_parses_sizes_and_rejects_unknown_keys():
    cfg = Config.from_dict({"block_size": "1MiB", "max_data": "8MiB",
                            "tiers": [{"medium": "SSD", "path": "/s", "quota": "2GiB"}]})
    assert cfg.block_size == MiB and cfg.max_data == 8 * MiB
    assert cfg.tiers == (TierConfig("SSD", "/s", 2 * GiB),)
    with pytest.raises(InvalidRequest, match="blocksize"):
        Config.from_dict({"blocksize": "1MiB"})


# -- load: defaults < file < environment < overrides -------------------------------------

@pytest.fixture
def cfg_file(tmp_path):
    p = tmp_path / "fc.json"
    p.write_text(json.dumps({"block_size": "1MiB", "eviction": "lfu", "host": "10.0.0.1",
                             "master_port": 7000}))
    return p


def test_load_defaults_with_empty_env():
    assert load(env={}) == Config()


def test_load_file(cfg_file):
    cfg = load(cfg_file, env={})
    assert (cfg.block_size, cfg.eviction, cfg.host, cfg.master_port) == (MiB, "lfu",
                                                                         "10.0.0.1", 7000)
    assert cfg.request_timeout == Config().request_timeout


def test_load_file_named_by_env(cfg_file):
    assert load(env={"FLUIDCACHE_CONFIG": str(cfg_file)}).eviction == "lfu"


def test_env_beats_file_and_is_typed(cfg_file):
    env = {"FLUIDCACHE_EVICTION": "fill-once", "FLUIDCACHE_BLOCK_SIZE": "2MiB",
           "FLUIDCACHE_MASTER_PORT": "7100", "FLUIDCACHE_CONNECT_TIMEOUT": "1.5",
           "FLUIDCACHE_REQUEST_TIMEOUT": "9", "FLUIDCACHE_HOST": "0.0.0.0"}
    cfg = load(cfg_file, env=env)
    assert cfg.eviction == "fill-once" and cfg.block_size == 2 * MiB
    assert cfg.master_port == 7100 and isinstance(cfg.master_port, int)
    assert cfg.request_timeout == 9.0                  # the servers' request deadline
    client = ClientSettings.from_env(env)               # the clients' timeouts
    assert client.connect_timeout == 1.5 and client.request_timeout == 9.0
    assert isinstance(cfg.request_timeout, float)
    assert cfg.host == "0.0.0.0"


@pytest.mark.parametrize("value, promote", [("1", True), ("true", True), ("YES", True),
                                            ("on", True), ("0", False), ("false", False),
                                            ("no", False), ("", False)])
def test_boolean_env(value, promote):
    assert load(env={"FLUIDCACHE_PROMOTE": value}).promote is promote


def test_overrides_beat_env_and_none_overrides_are_ignored(cfg_file):
    env = {"FLUIDCACHE_EVICTION": "fill-once", "FLUIDCACHE_MASTER_PORT": "7100"}
    cfg = load(cfg_file, env=env, eviction="lru", master_port=None, block_size="8MiB")
    assert cfg.eviction == "lru"
    assert cfg.master_port == 7100
    assert cfg.block_size == 8 * MiB


def test_explicit_path_beats_env_path(cfg_file, tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"eviction": "fill-once"}))
    assert load(other, env={"FLUIDCACHE_CONFIG": str(cfg_file)}).eviction == "fill-once"


@pytest.mark.parametrize("content", ["{not json", '{"eviction": "mru"}', '{"colour": 1}'])
def test_load_bad_file(tmp_path, content):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(InvalidRequest):
        load(p, env={})


def test_load_missing_file(tmp_path):
    with pytest.raises(InvalidRequest, match="cannot read"):
        load(tmp_path / "nope.json", env={})


def test_load_does_not_touch_os_environ(cfg_file):
    before = dict(os.environ)
    load(cfg_file, env={"FLUIDCACHE_EVICTION": "lfu"})
    assert dict(os.environ) == before


def test_client_settings_refuse_a_timeout_that_is_not_a_number():
    with pytest.raises(InvalidRequest, match="FLUIDCACHE_FAILOVER_TIMEOUT"):
        ClientSettings.from_env({"FLUIDCACHE_FAILOVER_TIMEOUT": "soon"})
    assert ClientSettings.from_env({}, fanout=3).fanout == 3
