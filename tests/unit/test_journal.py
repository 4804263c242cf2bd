"""The master's journal: records survive, a torn tail is cut, snapshots compact, and
replay into MasterCore is idempotent."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings, strategies as st

from fluidcache.master.core import MasterCore
from fluidcache.master.journal import Journal, decode, encode
from fluidcache.dataset import Dataset, MountSpec

records = st.lists(st.dictionaries(st.text(max_size=8),
                                   st.one_of(st.integers(-2**63, 2**64 - 1),
                                             st.text(max_size=20), st.binary(max_size=20)),
                                   max_size=4), max_size=20)


@given(records, st.data())
@settings(max_examples=200, deadline=None)
def test_decode_returns_the_whole_records_of_any_prefix(recs, data):
    blob = b"".join(encode(r) for r in recs)
    cut = data.draw(st.integers(0, len(blob)))
    got, valid = decode(blob[:cut])
    ends = [0]
    for r in recs:
        ends.append(ends[-1] + len(encode(r)))
    whole = max(i for i, e in enumerate(ends) if e <= cut)
    assert got == recs[:whole] and valid == ends[whole]


def test_a_corrupt_record_ends_the_valid_prefix():
    a, b, c = encode({"n": 1}), encode({"n": 2}), encode({"n": 3})
    bad = bytearray(a + b + c)
    bad[len(a) + 9] ^= 0xFF            # a byte of b's body
    got, valid = decode(bytes(bad))
    assert got == [{"n": 1}] and valid == len(a)


def test_journal_survives_reopen_and_cuts_a_torn_tail(tmp_path):
    j = Journal(str(tmp_path), fsync=False)
    j.append({"op": "a"})
    j.append({"op": "b"})
    j.close()
    with open(tmp_path / "journal.log", "ab") as f:
        f.write(encode({"op": "torn"})[:-3])             # a crash mid-append
    snap, recs = Journal(str(tmp_path)).load()
    assert snap is None and recs == [{"op": "a"}, {"op": "b"}]
    assert os.path.getsize(tmp_path / "journal.log") == len(encode({"op": "a"})) * 2
    j2 = Journal(str(tmp_path), fsync=False)
    j2.load()
    j2.append({"op": "c"})
    j2.close()
    assert Journal(str(tmp_path)).load()[1] == [{"op": "a"}, {"op": "b"}, {"op": "c"}]


def test_snapshot_then_log(tmp_path):
    j = Journal(str(tmp_path), fsync=False)
    j.append({"op": "old"})
    j.snapshot({"state": 1})
    j.append({"op": "new"})
    j.close()
    assert Journal(str(tmp_path)).load() == ({"state": 1}, [{"op": "new"}])


def _ds(name="d", ns="default"):
    return Dataset(name, ns, (MountSpec("", "s3://b/p", {"key": "k"}),))


def test_master_state_replays_idempotently():
    core = MasterCore()
    recs = [{"op": "namespace", "ns": "default", "token": "t0"},
            {"op": "namespace", "ns": "team", "token": "t1"},
            {"op": "dataset_add", "dataset": _ds("a").to_record()},
            {"op": "dataset_add", "dataset": _ds("b", "team").to_record()},
            {"op": "dataset_rm", "ns": "default", "name": "a"}]
    for r in recs:
        core.apply(r)
    snap = core.state()
    again = MasterCore()
    again.restore(snap)
    for r in recs:                     # a crash between snapshot and log cut replays them
        again.apply(r)
    assert again.state() == snap
    assert again.tokens == {"default": "t0", "team": "t1"}
    assert set(again.datasets) == {("team", "b")}
    assert again.dataset("team", "b").mounts[0].options == {"key": "k"}


def test_replay_keeps_the_first_token_of_a_namespace():
    core = MasterCore()
    core.apply({"op": "namespace", "ns": "default", "token": "first"})
    core.apply({"op": "namespace", "ns": "default", "token": "second"})
    assert core.tokens["default"] == "first"
    with pytest.raises(PermissionError):
        core.authorize("default", "second")


def test_a_failed_append_leaves_the_log_as_it_was(tmp_path):
    from fluidcache.master.journal import JournalError
    j = Journal(str(tmp_path), fsync=False)
    j.append({"op": "a"})
    good = os.path.getsize(tmp_path / "journal.log")
    j._f.close()
    j._f = open(tmp_path / "journal.log", "rb")      # a file that refuses writes (as ENOSPC)
    with pytest.raises(JournalError):
        j.append({"op": "lost"})
    assert os.path.getsize(tmp_path / "journal.log") == good
    j.append({"op": "b"})                             # and the next append works
    j.close()
    assert Journal(str(tmp_path)).load()[1] == [{"op": "a"}, {"op": "b"}]
    assert (tmp_path / "journal.log").stat().st_mode & 0o777 == 0o600


def test_an_unreadable_snapshot_is_an_error_not_an_empty_state(tmp_path):
    from fluidcache.master.journal import JournalError
    j = Journal(str(tmp_path), fsync=False)
    j.snapshot({"tokens": {"default": "t"}, "datasets": []})
    j.close()
    big = Journal(str(tmp_path))
    assert big.load()[0]["tokens"] == {"default": "t"}
    with open(tmp_path / "snapshot.msgpack", "r+b") as f:
        f.seek(10)
        f.write(b"\xff\xff")
    with pytest.raises(JournalError):
        Journal(str(tmp_path)).load()


def test_a_snapshot_larger_than_a_record_loads(tmp_path):
    j = Journal(str(tmp_path), fsync=False)
    state = {"blob": "x" * (17 * 1024 * 1024)}
    j.snapshot(state)
    j.close()
    assert Journal(str(tmp_path)).load()[0] == state


def test_a_record_that_cannot_be_applied_never_loses_the_records_after_it(tmp_path):
    """A whole record that replay cannot use (non-string map keys in a dataset's options,
    an unknown op) is skipped; every later namespace, token and dataset survives."""
    j = Journal(str(tmp_path), fsync=False)
    j.append({"op": "namespace", "ns": "first", "token": "t1"})
    j.append({"op": "dataset_add", "dataset": {"name": "evil", "namespace": "first",
                                               "mounts": [["", "s3://b", {1: 0}]]}})
    j.append({"op": "no-such-op"})
    j.append({"op": "namespace", "ns": "later", "token": "t2"})
    j.close()
    snap, recs = Journal(str(tmp_path), fsync=False).load()
    assert len(recs) == 4
    core = MasterCore()
    for rec in recs:
        try:
            core.apply(rec)
        except Exception:  # noqa: BLE001 - what the master does: log, skip, go on
            pass
    assert core.tokens == {"first": "t1", "later": "t2"}
    assert len(Journal(str(tmp_path), fsync=False).load()[1]) == 4     # nothing cut


def test_unreadable_bytes_are_set_aside_not_dropped(tmp_path):
    j = Journal(str(tmp_path), fsync=False)
    j.append({"op": "namespace", "ns": "a", "token": "t"})
    j.close()
    good = os.path.getsize(tmp_path / "journal.log")
    with open(tmp_path / "journal.log", "ab") as f:
        f.write(b"\xff" * 40 + encode({"op": "namespace", "ns": "b", "token": "u"}))
    _, recs = Journal(str(tmp_path), fsync=False).load()
    assert recs == [{"op": "namespace", "ns": "a", "token": "t"}]
    assert os.path.getsize(tmp_path / "journal.log") == good
    kept = (tmp_path / "journal.log.damaged-0").read_bytes()
    assert kept.endswith(encode({"op": "namespace", "ns": "b", "token": "u"}))
