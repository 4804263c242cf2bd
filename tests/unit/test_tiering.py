"""The tier accounting core, the on-disk block format and the block store
(fluidcache.tiering.core, .layout, .store). Stores use tmp_path directories only."""
from __future__ import annotations

import os
import tempfile
import shutil
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidcache.blocks import block_key, file_id
from fluidcache.config import TierConfig
from fluidcache.tiering import layout
from fluidcache.tiering.core import Reservation, StateError, TierIndex
from fluidcache.tiering.policy import make
from fluidcache.tiering.store import BlockStore

KEYS = [block_key(file_id("s3://bucket/data.bin", "etag-1"), i, 4 << 20) for i in range(64)]
A, B, C, D, E = KEYS[:5]


def index(*caps: int, policy: str = "lru") -> TierIndex:
    return TierIndex([(f"t{i}", c) for i, c in enumerate(caps)], lambda: make(policy))


def cached(ix: TierIndex, key: str, size: int) -> Reservation:
    res = ix.reserve(key, size)
    assert res is not None
    ix.commit(key)
    return res


def check_accounting(ix: TierIndex) -> None:
    """used = blocks held in the tier + blocks on their way into it; never over capacity."""
    for i, t in enumerate(ix.tiers):
        assert t.used == sum(e.size for e in ix.entries.values() if i in (e.tier, e.dest))
        assert 0 <= t.used <= t.capacity


# -- TierIndex: transitions ------------------------------------------------------------

def test_reserve_commit():
    ix = index(100)
    res = ix.reserve(A, 40)
    assert res == Reservation(A, 0, ())
    assert A not in ix and ix.tier_of(A) is None and ix.cached_keys() == []   # being written
    assert ix.tiers[0].used == 40                                             # but accounted
    ix.commit(A)
    assert A in ix and ix.tier_of(A) == 0 and ix.cached_keys() == [A]
    assert ix.tiers[0].blocks == {A}
    check_accounting(ix)


def test_reserve_abort_frees_the_room():
    ix = index(100)
    ix.reserve(A, 100)
    ix.abort(A)
    assert A not in ix.entries and ix.tiers[0].used == 0
    assert ix.reserve(A, 100) is not None        # the key may be tried again


@pytest.mark.parametrize("moves", [
    ["commit"], ["abort"],                           # unknown key
    ["reserve", "commit", "commit"],                 # commit twice
    ["reserve", "commit", "abort"],                  # abort a cached block
    ["reserve", "abort", "abort"],
    ["reserve", "abort", "commit"],
    ["reserve", "reserve"],                          # reserve a block being written
    ["reserve", "commit", "reserve"],                # reserve a cached block
])
def test_illegal_moves_raise_state_error(moves):
    ix = index(100)
    *legal, illegal = moves
    for m in legal:
        getattr(ix, m)(A, 10) if m == "reserve" else getattr(ix, m)(A)
    before = (dict(ix.entries), ix.tiers[0].used)
    with pytest.raises(StateError):
        getattr(ix, illegal)(A, 10) if illegal == "reserve" else getattr(ix, illegal)(A)
    assert (dict(ix.entries), ix.tiers[0].used) == before   # an illegal move changes nothing


def test_remove_only_settled_blocks():
    ix = index(100)
    cached(ix, A, 30)
    ix.reserve(B, 30)
    assert ix.remove(B) is None and ix.tiers[0].used == 60   # being written: left alone
    assert ix.remove(C) is None
    e = ix.remove(A)
    assert (e.tier, e.size) == (0, 30) and A not in ix and ix.tiers[0].used == 30


def test_add_existing():
    ix = index(100)
    assert ix.add_existing(A, 0, 60) and A in ix
    assert not ix.add_existing(A, 0, 10)          # a duplicate
    assert not ix.add_existing(B, 0, 41)          # does not fit
    assert ix.add_existing(B, 0, 40) and ix.tiers[0].used == 100
    check_accounting(ix)


# -- TierIndex: placement and eviction ---------------------------------------------------

def test_first_tier_with_room_then_evict():
    ix = index(100, 100)
    assert cached(ix, A, 60).tier == 0
    assert cached(ix, B, 60).tier == 1            # tier 0 has no room: no eviction, go down
    assert cached(ix, C, 40).tier == 0
    assert ix.evictions == 0
    res = cached(ix, D, 50)                        # no room anywhere: evict in tier 0 (LRU)
    assert res.tier == 0 and res.evict == (A,)
    assert A not in ix and ix.evictions == 1
    check_accounting(ix)


def test_eviction_follows_the_policy_order():
    ix = index(90)
    for k in (A, B, C):
        cached(ix, k, 30)
    ix.access(A)
    assert cached(ix, D, 60).evict == (B, C)
    assert set(ix.cached_keys()) == {A, D}


def test_block_larger_than_every_tier_is_not_cached():
    ix = index(100, 50)
    cached(ix, A, 10)
    assert ix.reserve(B, 101) is None
    assert ix.cached_keys() == [A] and B not in ix.entries and ix.evictions == 0


def test_pinned_blocks_are_never_victims():
    ix = index(90)
    for k in (A, B, C):
        cached(ix, k, 30)
    ix.pin(A)                                      # A is the least recently used
    assert cached(ix, D, 30).evict == (B,)
    for k in (C, D):
        ix.pin(k)
    assert ix.reserve(E, 30) is None               # everything left is pinned
    assert set(ix.cached_keys()) == {A, C, D}
    ix.pin(C, False)
    assert cached(ix, E, 30).evict == (C,)


def test_reserved_blocks_are_never_victims():
    ix = index(100)
    ix.reserve(A, 60)                              # being written, oldest
    cached(ix, B, 40)
    assert ix.reserve(C, 40).evict == (B,)
    assert ix.reserve(D, 1) is None                # only blocks being written are left
    assert set(ix.entries) == {A, C}


def test_fill_once_refuses_when_full_and_evicts_nothing():
    ix = index(60, policy="fill-once")
    cached(ix, A, 30)
    cached(ix, B, 30)
    assert ix.reserve(C, 30) is None
    assert set(ix.cached_keys()) == {A, B} and ix.evictions == 0
    ix.remove(A)                                   # explicit removals still make room
    assert cached(ix, C, 30).evict == ()


def test_lfu_keeps_the_hot_block():
    ix = index(60, policy="lfu")
    cached(ix, A, 30)
    cached(ix, B, 30)
    for _ in range(3):
        ix.access(A)
    assert cached(ix, C, 30).evict == (B,)


def _promoting() -> TierIndex:
    """Two tiers of 100 (high mark 0.95); B (60) in tier 1 on its way up to an empty tier 0."""
    ix = TierIndex([("t0", 100), ("t1", 100)], lambda: make("lru"))
    cached(ix, A, 60)
    assert cached(ix, B, 60).tier == 1             # no room left in tier 0
    ix.remove(A)
    move = ix.plan_promote(B)
    assert (move.key, move.src, move.dst, move.reason) == (B, 1, 0, "promote")
    return ix


def test_a_moving_block_is_held_where_it_was_and_room_is_kept_in_both_tiers():
    ix = _promoting()
    assert ix.entries[B].state == "moving" and B in ix and ix.tier_of(B) == 1
    assert (ix.tiers[0].used, ix.tiers[1].used) == (60, 60)
    assert ix.remove(B) is None                    # not while it moves
    assert ix.reserve(D, 50) is None               # a moving block is never a victim
    for illegal in (ix.commit, ix.abort):
        with pytest.raises(StateError):
            illegal(B)
    check_accounting(ix)


def test_finish_move():
    ix = _promoting()
    ix.finish_move(B, "promote")
    assert ix.tier_of(B) == 0 and ix.entries[B].state == "cached"
    assert (ix.tiers[0].used, ix.tiers[1].used) == (60, 0)
    assert ix.tiers[0].blocks == {B} and ix.tiers[1].blocks == set()
    assert ix.moves["promote"] == 1
    with pytest.raises(StateError):
        ix.finish_move(B)                          # not moving any more
    check_accounting(ix)


def test_cancel_move():
    ix = _promoting()
    assert ix.reserve(C, 40) == Reservation(C, 0, ())    # 60 incoming + 40 fits tier 0
    ix.cancel_move(B)
    assert ix.tier_of(B) == 1 and (ix.tiers[0].used, ix.tiers[1].used) == (40, 60)
    assert ix.plan_promote(B) is None              # 40 + 60 is above tier 0's high mark
    with pytest.raises(StateError):
        ix.cancel_move(B)
    check_accounting(ix)


_ops = st.lists(st.tuples(
    st.sampled_from(["reserve", "commit", "abort", "remove", "pin", "unpin", "access",
                     "want", "cool", "prefetch"]),
    st.sampled_from(KEYS[:8]), st.integers(1, 70)), max_size=60)


@settings(max_examples=200, deadline=None)
@given(caps=st.tuples(st.integers(1, 150), st.integers(1, 150)),
       policy=st.sampled_from(["lru", "lfu", "fill-once"]), ops=_ops)
def test_index_keeps_its_invariants(caps, policy, ops):
    """Random moves against a model: legal ones behave, illegal ones raise StateError,
    and accounting, pins and reservations hold after every move."""
    ix = index(*caps, policy=policy)
    state: dict[str, str] = {}
    pinned: set[str] = set()
    for op, k, size in ops:
        if op in ("reserve", "prefetch"):        # (a prefetch: of group "g", marked)
            group = "g" if op == "prefetch" or size % 2 else None
            if k in state:
                with pytest.raises(StateError):
                    ix.reserve(k, size, group, op == "prefetch")
                continue
            # marks of this group that hold (not lapsed once this fill is counted)
            wanted = {v for v, (g, n) in ix.wanted.items() if g == group and
                      ix._fills + 1 - n <=
                      2 * max(1, len(ix.tiers[ix.entries[v].tier].blocks))}
            res = ix.reserve(k, size, group, op == "prefetch")
            if res is not None:
                for v in res.evict:
                    assert state.pop(v) == "cached" and v not in pinned
                    assert v not in wanted
                    assert v not in ix.entries
                state[k] = "reserved"
        elif op in ("commit", "abort"):
            if state.get(k) != "reserved":
                with pytest.raises(StateError):
                    getattr(ix, op)(k)
                continue
            getattr(ix, op)(k)
            if op == "commit":
                state[k] = "cached"
            else:
                del state[k]
        elif op == "remove":
            assert (ix.remove(k) is not None) == (state.get(k) == "cached")
            if state.get(k) == "cached":
                del state[k]
        elif op in ("pin", "unpin") and k in state:
            ix.pin(k, op == "pin")
            (pinned.add if op == "pin" else pinned.discard)(k)
        elif op == "access":
            ix.access(k)
        elif op in ("want", "cool"):
            held = ix.want(k, "g") if op == "want" else ix.cool(k)
            assert held == (state.get(k) == "cached")
        pinned &= set(state)
        assert set(ix.wanted) <= {k for k, s in state.items() if s == "cached"}
        assert {k: e.state for k, e in ix.entries.items()} == state
        assert set(ix.cached_keys()) == {k for k, s in state.items() if s == "cached"}
        check_accounting(ix)


# -- layout -----------------------------------------------------------------------------

def test_write_read_round_trip(tmp_path):
    d = str(tmp_path)
    for key, data in ((A, b"hello block"), (B, b""), (C, os.urandom(70_000))):
        assert layout.write_block(d, key, data) == len(data) + layout.TRAILER.size
        assert layout.block_path(d, key) == os.path.join(d, key[:2], key + ".blk")
        assert bytes(layout.read_block(d, key)) == data
    assert not [n for _, _, names in os.walk(d) for n in names if n.startswith(".tmp-")]


def test_read_absent_block_is_none(tmp_path):
    assert layout.read_block(str(tmp_path), A) is None
    assert layout.read_block(str(tmp_path / "missing-dir"), A) is None


def _rewrite(path: str, fn) -> None:
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    with open(path, "wb") as f:
        f.write(fn(raw))


def _flip(pos: int):
    def fn(raw: bytearray) -> bytearray:
        raw[pos] ^= 0x01
        return raw
    return fn


@pytest.mark.parametrize("damage", [
    pytest.param(_flip(0), id="data-first"), pytest.param(_flip(99), id="data-last"),
    pytest.param(_flip(100), id="magic"), pytest.param(_flip(110), id="length"),
    pytest.param(_flip(116), id="checksum"), pytest.param(_flip(123), id="checksum-last"),
    pytest.param(lambda raw: raw[:-1], id="truncated-by-one"),
    pytest.param(lambda raw: raw[:60], id="truncated-in-data"),
    pytest.param(lambda raw: raw[:10], id="shorter-than-trailer"),
    pytest.param(lambda raw: b"", id="empty"),
    pytest.param(lambda raw: raw + b"x", id="grown"),
])
def test_damaged_block_is_corrupt(tmp_path, damage):
    d = str(tmp_path)
    layout.write_block(d, A, bytes(range(100)))
    _rewrite(layout.block_path(d, A), damage)
    with pytest.raises(layout.CorruptBlock):
        layout.read_block(d, A)


def test_checksum_is_bound_to_the_key(tmp_path):
    d = str(tmp_path)
    layout.write_block(d, A, b"the bytes of block A")
    os.makedirs(os.path.dirname(layout.block_path(d, B)), exist_ok=True)
    shutil.copy(layout.block_path(d, A), layout.block_path(d, B))
    with pytest.raises(layout.CorruptBlock, match="checksum"):
        layout.read_block(d, B)


def _raw_block(key, data, meta):
    with tempfile.TemporaryDirectory() as d:
        layout.write_block(d, key, data, meta)
        with open(layout.block_path(d, key), "rb") as f:
            return bytearray(f.read())


@given(st.binary(max_size=300), st.integers(0, 10_000), st.integers(0, 7),
       st.text(max_size=12))
@settings(max_examples=300, deadline=None)
def test_any_flipped_bit_is_caught(data, where, bit, owner):
    meta = layout.Meta(owner, "ab" * 16, 7)
    raw = _raw_block(A, data, meta)
    assert bytes(layout.parse(A, bytes(raw))) == data
    pos = where % len(raw)
    reserved = len(raw) - layout.TRAILER.size + 6     # 2 reserved bytes after magic and n
    if pos in (reserved, reserved + 1):
        return                                   # reserved bytes: not covered by design
    raw[pos] ^= 1 << bit
    with pytest.raises(layout.CorruptBlock):
        layout.parse(A, bytes(raw))


def test_meta_is_kept_and_read_from_the_tail(tmp_path):
    meta = layout.Meta("default/imagenet", "0f" * 16, 12)
    size = layout.write_block(str(tmp_path), A, b"abc" * 100, meta)
    path = layout.block_path(str(tmp_path), A)
    assert size == layout.disk_size(300, meta) == os.path.getsize(path)
    assert layout.read_meta(layout.block_path(str(tmp_path), A), A) == meta
    assert layout.copy_block(str(tmp_path), str(tmp_path / "other"), A)
    assert bytes(layout.read_block(str(tmp_path / "other"), A)) == b"abc" * 100
    assert layout.read_meta(layout.block_path(str(tmp_path / "other"), A), A) == meta


def test_scan_lists_blocks_and_deletes_leftovers(tmp_path):
    d = str(tmp_path)
    layout.write_block(d, A, b"a" * 10)
    layout.write_block(d, B, b"b" * 20)
    tmp = os.path.join(d, C[:2], f"{layout.TMP_PREFIX}{C}-deadbeef")
    os.makedirs(os.path.dirname(tmp), exist_ok=True)
    open(tmp, "wb").write(b"half a block")
    os.makedirs(os.path.join(d, "not-a-shard"))
    open(os.path.join(d, "not-a-shard", D + ".blk"), "wb").write(b"ignored")
    open(os.path.join(d, A[:2], "notes.txt"), "wb").write(b"ignored")
    found = dict(layout.scan(d))
    assert found == {A: 10 + layout.TRAILER.size, B: 20 + layout.TRAILER.size}
    assert not os.path.exists(tmp)
    assert list(layout.scan(str(tmp_path / "missing"))) == []


def test_failed_write_leaves_no_temporary(tmp_path):
    d = str(tmp_path)
    final = layout.block_path(d, A)
    os.makedirs(os.path.join(final, "x"))          # a non-empty directory where the file goes
    with pytest.raises(OSError):
        layout.write_block(d, A, b"data")
    assert os.listdir(os.path.dirname(final)) == [os.path.basename(final)]


def test_remove_block_is_idempotent(tmp_path):
    d = str(tmp_path)
    layout.write_block(d, A, b"x")
    layout.remove_block(d, A)
    layout.remove_block(d, A)
    assert layout.read_block(d, A) is None


# -- BlockStore ---------------------------------------------------------------------------

T = layout.TRAILER.size


def tiers(tmp_path, *quotas: int) -> list[TierConfig]:
    media = ["MEM", "SSD", "HDD"]
    return [TierConfig(media[i], str(tmp_path / f"tier{i}"), q) for i, q in enumerate(quotas)]


def data_of(key: str, n: int) -> bytes:
    return (key.encode() * (n // len(key) + 1))[:n]


def test_put_get(tmp_path):
    s = BlockStore(tiers(tmp_path, 1000))
    assert s.put(A, b"abc") and A in s
    assert bytes(s.get(A)) == b"abc"
    assert s.get(B) is None
    assert os.path.exists(layout.block_path(s.paths[0], A))
    assert s.tiers()[0]["used"] == 3 + T and s.tiers()[0]["blocks"] == 1
    assert s.touch(A) and not s.touch(B)


def test_put_of_a_held_key_keeps_the_first_bytes(tmp_path):
    s = BlockStore(tiers(tmp_path, 1000))
    assert s.put(A, b"first")
    assert s.put(A, b"second")                     # keys name their bytes: nothing to redo
    assert bytes(s.get(A)) == b"first"


def test_eviction_when_over_quota(tmp_path):
    s = BlockStore(tiers(tmp_path, 3 * (100 + T)))
    for k in (A, B, C):
        assert s.put(k, data_of(k, 100))
    s.get(A)                                       # A is now more recent than B
    assert s.put(D, data_of(D, 100))
    assert B not in s and s.get(B) is None and s.evictions == 1
    assert not os.path.exists(layout.block_path(s.paths[0], B))
    for k in (A, C, D):
        assert bytes(s.get(k)) == data_of(k, 100)
    assert s.tiers()[0]["used"] <= s.tiers()[0]["capacity"]


def test_spill_to_the_next_tier_then_too_big(tmp_path):
    s = BlockStore(tiers(tmp_path, 100 + T, 200 + T))
    assert s.put(A, data_of(A, 100)) and s.put(B, data_of(B, 150))
    assert s.index.tier_of(A) == 0 and s.index.tier_of(B) == 1
    assert not s.put(C, data_of(C, 300))            # bigger than every tier
    assert C not in s and s.evictions == 0
    assert not os.path.exists(layout.block_path(s.paths[1], C))


def test_pinned_block_survives_pressure(tmp_path):
    s = BlockStore(tiers(tmp_path, 2 * (50 + T)))
    s.put(A, data_of(A, 50))
    s.put(B, data_of(B, 50))
    assert s.pin(A)
    assert s.put(C, data_of(C, 50))
    assert A in s and B not in s
    assert s.pin(C)
    assert not s.put(D, data_of(D, 50))            # nothing left to evict
    assert s.pin(A, False)
    assert s.put(D, data_of(D, 50)) and A not in s and C in s


def test_remove(tmp_path):
    s = BlockStore(tiers(tmp_path, 1000))
    s.put(A, b"abc")
    assert s.remove(A) and A not in s and not s.remove(A)
    assert not os.path.exists(layout.block_path(s.paths[0], A))
    assert s.tiers()[0]["used"] == 0


def test_corrupt_file_is_dropped_and_counted(tmp_path):
    s = BlockStore(tiers(tmp_path, 1000))
    s.put(A, data_of(A, 100))
    s.put(B, data_of(B, 100))
    _rewrite(layout.block_path(s.paths[0], A), _flip(10))
    assert s.get(A) is None
    assert s.corrupt_blocks == 1 and A not in s
    assert not os.path.exists(layout.block_path(s.paths[0], A))
    assert s.tiers()[0]["used"] == 100 + T
    assert bytes(s.get(B)) == data_of(B, 100) and s.corrupt_blocks == 1


def test_file_deleted_behind_the_store_is_forgotten(tmp_path):
    s = BlockStore(tiers(tmp_path, 1000))
    s.put(A, b"abc")
    os.unlink(layout.block_path(s.paths[0], A))
    assert s.get(A) is None and A not in s and s.tiers()[0]["used"] == 0
    assert s.corrupt_blocks == 0                   # missing is not corrupt


def test_restart_recovers_blocks(tmp_path):
    cfg = tiers(tmp_path, 2 * (100 + T), 1000)
    s = BlockStore(cfg)
    for k in (A, B, C):
        assert s.put(k, data_of(k, 100))
    where = {k: s.index.tier_of(k) for k in (A, B, C)}
    used = [t["used"] for t in s.tiers()]
    s2 = BlockStore(cfg)
    assert {k: s2.index.tier_of(k) for k in (A, B, C)} == where
    assert [t["used"] for t in s2.tiers()] == used
    for k in (A, B, C):
        assert bytes(s2.get(k)) == data_of(k, 100)


def test_restart_with_smaller_quota_deletes_what_does_not_fit(tmp_path):
    s = BlockStore(tiers(tmp_path, 1000))
    for k in (A, B, C):
        s.put(k, data_of(k, 100))
    s2 = BlockStore(tiers(tmp_path, 2 * (100 + T)))
    held = [k for k in (A, B, C) if k in s2]
    assert len(held) == 2
    assert s2.tiers()[0]["used"] == 2 * (100 + T)
    assert dict(layout.scan(s2.paths[0])).keys() == set(held)


def test_restart_keeps_one_copy_of_a_duplicate(tmp_path):
    cfg = tiers(tmp_path, 1000, 1000)
    s = BlockStore(cfg)
    s.put(A, b"abc")
    os.makedirs(os.path.dirname(layout.block_path(s.paths[1], A)), exist_ok=True)
    shutil.copy(layout.block_path(s.paths[0], A), layout.block_path(s.paths[1], A))
    s2 = BlockStore(cfg)
    assert s2.index.tier_of(A) == 0 and bytes(s2.get(A)) == b"abc"
    assert layout.read_block(s2.paths[1], A) is None
    assert s2.tiers()[1]["used"] == 0


def test_restart_removes_leftover_temporaries(tmp_path):
    cfg = tiers(tmp_path, 1000)
    BlockStore(cfg).put(A, b"abc")
    tmp = os.path.join(str(tmp_path / "tier0"), A[:2], f"{layout.TMP_PREFIX}{B}-0000")
    open(tmp, "wb").write(b"partial")
    s = BlockStore(cfg)
    assert not os.path.exists(tmp) and B not in s and A in s


def test_rescan_of_a_live_store_keeps_its_blocks(tmp_path):
    s = BlockStore(tiers(tmp_path, 1000))
    s.put(A, b"abc")
    s.rescan()
    assert bytes(s.get(A)) == b"abc"


def test_write_failure_when_the_shard_dir_cannot_be_made(tmp_path):
    # Works as root too: the block's shard directory name is taken by a file.
    s = BlockStore(tiers(tmp_path, 1000))
    open(os.path.join(s.paths[0], A[:2]), "wb").close()
    assert s.put(A, b"abc") is False
    assert s.write_failures == 1 and A not in s and A not in s.index.entries
    assert s.tiers()[0]["used"] == 0
    other = next(k for k in KEYS if k[:2] != A[:2])
    assert s.put(other, b"abc") is True            # other shards are unaffected


def test_unwritable_tier_dir(tmp_path):
    s = BlockStore(tiers(tmp_path, 1000))
    os.chmod(s.paths[0], stat.S_IRUSR | stat.S_IXUSR)     # 0o500
    try:
        probe = os.path.join(s.paths[0], "probe")
        try:
            open(probe, "wb").close()
        except PermissionError:
            pass
        else:
            os.unlink(probe)
            pytest.skip("chmod 0o500 does not stop this user's writes (running as root)")
        assert s.put(A, b"abc") is False
        assert s.write_failures == 1 and A not in s and s.tiers()[0]["used"] == 0
        assert s.get(A) is None
    finally:
        os.chmod(s.paths[0], 0o700)


# -- BlockStore maintenance: one synchronous round, no thread ------------------------------

DATA64 = 64 - layout.TRAILER.size     # data bytes of a block that takes 64 on disk


def _marked(tmp_path) -> list[TierConfig]:
    """MEM 200 B (high 0.9 = 180, low 0.5 = 100) over a roomy SSD; blocks of DATA64 bytes
    use 64 on disk."""
    return [TierConfig("MEM", str(tmp_path / "mem"), 200, high=0.9, low=0.5),
            TierConfig("SSD", str(tmp_path / "ssd"), 1000)]


def test_maintain_demotes_down_to_the_low_mark(tmp_path):
    s = BlockStore(_marked(tmp_path))
    for k in (A, B, C):
        assert s.put(k, data_of(k, DATA64))            # 192 used: above the high mark
    assert s.maintain()["demote"] == 2             # 192 -> 64, at or below 100
    assert [s.index.tier_of(k) for k in (A, B, C)] == [1, 1, 0]
    assert [t["used"] for t in s.tiers()] == [64, 128]
    assert s.moves["demote"] == 2 and s.evictions == 0
    assert s.maintain() == {"demote": 0, "promote": 0, "evict": 0, "expire": 0}   # settled
    for k in (A, B):
        assert layout.read_block(s.paths[0], k) is None      # the old copy is gone
        assert bytes(layout.read_block(s.paths[1], k)) == data_of(k, DATA64)


def test_maintain_leaves_pinned_blocks_in_place(tmp_path):
    s = BlockStore(_marked(tmp_path))
    for k in (A, B, C):
        s.put(k, data_of(k, DATA64))
    s.pin(A)
    s.maintain()
    assert [s.index.tier_of(k) for k in (A, B, C)] == [0, 1, 1]


@pytest.mark.parametrize("promote", [True, False])
def test_a_read_from_the_lower_tier_promotes(tmp_path, promote):
    s = BlockStore(_marked(tmp_path), promote=promote)
    for k in (A, B, C):
        s.put(k, data_of(k, DATA64))
    s.maintain()                                   # A and B demoted
    assert bytes(s.get(A)) == data_of(A, DATA64)
    assert s.maintain()["promote"] == int(promote)
    assert s.index.tier_of(A) == (0 if promote else 1)
    assert bytes(s.get(A)) == data_of(A, DATA64)


def test_ttl_expires_with_the_injected_clock(tmp_path):
    now = [100.0]
    s = BlockStore(tiers(tmp_path, 1000), clock=lambda: now[0])
    s.put(A, b"short-lived")
    s.put(B, b"kept")
    s.set_ttl(A, 10)
    now[0] = 109.9
    assert s.maintain()["expire"] == 0 and A in s
    now[0] = 110.0
    assert s.maintain()["expire"] == 1
    assert A not in s and B in s and layout.read_block(s.paths[0], A) is None
    assert s.moves["expire"] == 1


def test_listener_sees_adds_and_removes_with_data_sizes(tmp_path):
    events = []
    cfg = tiers(tmp_path, 3 * (100 + T + 16))
    s = BlockStore(cfg)
    s.listener = lambda ev, key, meta, size: events.append((ev, key, meta, size))
    meta = layout.Meta("default/d", "ab" * 16, 3)
    assert s.put(A, data_of(A, 100), meta)
    assert events == [("add", A, meta, 100)]
    assert s.describe(A) == (meta, 100)
    s.remove(A)
    assert events[-1][:2] == ("remove", A) and s.describe(A) is None
    for k in (A, B, C, D):                       # the fourth evicts the least recently used
        s.put(k, data_of(k, 100), meta)
    assert ("remove", A) in [e[:2] for e in events[-2:]]
    again = BlockStore(cfg)                      # a restart: blocks describe themselves
    assert sorted(again.keys()) == sorted([B, C, D])
    assert all(again.describe(k) == (meta, 100) for k in (B, C, D))


def test_read_block_into_verifies_in_place(tmp_path):
    d = str(tmp_path)
    meta = layout.Meta("default/d", "cd" * 16, 2)
    data = data_of(A, 5000)
    layout.write_block(d, A, data, meta)
    out = bytearray(5000)
    assert layout.read_block_into(d, A, memoryview(out)) and bytes(out) == data
    assert not layout.read_block_into(d, A, memoryview(bytearray(4999)))   # another length
    assert not layout.read_block_into(d, B, memoryview(bytearray(5000)))   # absent
    with open(layout.block_path(d, A), "r+b") as f:
        f.seek(17)
        f.write(b"\x00" if data[17] else b"\x01")
    with pytest.raises(layout.CorruptBlock):
        layout.read_block_into(d, A, memoryview(bytearray(5000)))
