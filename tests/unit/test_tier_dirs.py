"""Tier directories carry their cluster's identity: a cluster never adopts another's
blocks, finds its own again after a restart, and gives a memory tier back at stop."""
from __future__ import annotations

import os

from fluidcache.tiering import dirs, layout


def _block(d, key="ab" + "0" * 30, data=b"x" * 100):
    layout.write_block(str(d), key, data, layout.Meta("ns/ds", "1" * 32, 0))
    return key


def test_blocks_of_another_cluster_are_removed_not_adopted(tmp_path):
    held = []
    d = dirs.claim_dir(str(tmp_path / "mem"), "cluster-a", held)
    key = _block(d)
    (tmp_path / "mem" / "keep.txt").write_text("not ours")       # never touched
    for fd in held:
        os.close(fd)                                               # cluster a stopped
    held = []
    assert dirs.claim_dir(str(tmp_path / "mem"), "cluster-a", held) == d
    assert os.path.exists(layout.block_path(d, key))              # its own: kept
    for fd in held:
        os.close(fd)
    held = []
    assert dirs.claim_dir(str(tmp_path / "mem"), "cluster-b", held) == d
    assert not os.path.exists(layout.block_path(d, key))          # another's: gone
    assert dirs.owner_of(d) == "cluster-b"
    assert (tmp_path / "mem" / "keep.txt").read_text() == "not ours"


def test_a_directory_held_by_a_live_worker_is_not_taken(tmp_path):
    held_a, held_b = [], []
    a = dirs.claim_dir(str(tmp_path / "mem"), "c", held_a)
    key = _block(a)
    b = dirs.claim_dir(str(tmp_path / "mem"), "other", held_b)
    assert b == os.path.join(a, "w1") and os.path.exists(layout.block_path(a, key))


def test_release_gives_the_memory_tier_back(tmp_path):
    held = []
    base = str(tmp_path / "mem")
    d = dirs.claim_dir(base, "c", held)
    _block(d)
    dirs.release(d, base)
    assert not os.path.exists(base)
    held2, held3 = [], []
    d1 = dirs.claim_dir(base, "c", held2)
    d2 = dirs.claim_dir(base, "c", held3)                         # w1 inside d1
    _block(d2)
    dirs.release(d1, base)
    assert os.path.isdir(d2) and len(list(layout.scan(d2))) == 1   # the other's stays
