"""Tier directories carry their cluster's identity: a cluster never adopts another's
blocks, finds its own again after a restart, and gives a memory tier back at stop."""
from __future__ import annotations

import os

import pytest

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


def test_tiers_are_private_and_a_foreign_or_linked_directory_is_refused(tmp_path):
    import stat
    held = []
    d = dirs.claim_dir(str(tmp_path / "mem"), "c", held)
    key = _block(d)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(layout.block_path(d, key)).st_mode) == 0o600
    (tmp_path / "loose").mkdir(mode=0o755)
    os.chmod(tmp_path / "loose", 0o777)
    dirs.claim_dir(str(tmp_path / "loose"), "c", [])               # ours: tightened
    assert stat.S_IMODE(os.stat(tmp_path / "loose").st_mode) == 0o700
    (tmp_path / "target").mkdir()
    os.symlink(tmp_path / "target", tmp_path / "linked")           # planted by someone
    with pytest.raises(dirs.TierDirError, match="symlink"):
        dirs.claim_dir(str(tmp_path / "linked"), "c", [])
    g = dirs.claim_dir(str(tmp_path / "group"), "c", [], group=True)   # fsGroup sharing
    assert stat.S_IMODE(os.stat(g).st_mode) == 0o750


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a directory to another user")
def test_a_tier_directory_of_another_user_is_refused(tmp_path):
    (tmp_path / "theirs").mkdir()
    os.chown(tmp_path / "theirs", os.geteuid() + 4242, -1)
    with pytest.raises(dirs.TierDirError, match="belongs to uid"):
        dirs.claim_dir(str(tmp_path / "theirs"), "c", [])


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a directory to another user")
def test_a_tier_below_a_directory_another_user_owns_is_refused(tmp_path):
    """Seen: a local user pre-created /tmp/x, let the worker make /tmp/x/ssd, then
    swapped `ssd` for a directory of its own and planted blocks."""
    (tmp_path / "theirs").mkdir()
    os.chown(tmp_path / "theirs", os.geteuid() + 4242, -1)
    with pytest.raises(dirs.TierDirError, match="above the tier directory"):
        dirs.claim_dir(str(tmp_path / "theirs" / "ssd"), "c", [])
    (tmp_path / "open").mkdir()
    os.chmod(tmp_path / "open", 0o777)                             # writable, not sticky
    with pytest.raises(dirs.TierDirError, match="not sticky"):
        dirs.claim_dir(str(tmp_path / "open" / "ssd"), "c", [])
    os.chmod(tmp_path / "open", 0o1777)                            # like /tmp: fine
    dirs.claim_dir(str(tmp_path / "open" / "ssd"), "c", [])


def test_a_tier_named_through_a_symlink_is_used_by_its_real_path(tmp_path):
    """Seen: a symlinked ancestor re-pointed after the check moved the worker's writes."""
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    d = dirs.claim_dir(str(tmp_path / "link" / "ssd"), "c", [])
    assert d == str(tmp_path / "real" / "ssd") and not os.path.islink(d)
    (tmp_path / "elsewhere").mkdir()
    os.unlink(tmp_path / "link")
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")      # re-pointed
    key = _block(d)
    assert os.path.exists(layout.block_path(str(tmp_path / "real" / "ssd"), key))
