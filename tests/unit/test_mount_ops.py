"""The mount's pure parts (issue 20): errno of each failure, stat fields of entries,
when the kernel may keep a file's pages."""
from __future__ import annotations

import errno
import stat

import pytest

from fluidcache.errors import (AccessDenied, IsADirectory, NotFound,
                               NotSupported, StaleVersion, Unavailable, UnderStoreError)
from fluidcache.posix.core import UNKNOWN, PageCache, errno_of, stat_of


@pytest.mark.parametrize("exc,code", [
    (NotFound("x"), errno.ENOENT), (AccessDenied("x"), errno.EACCES),
    (IsADirectory("x"), errno.EISDIR), (NotSupported("x"), errno.ENOTSUP),
    (StaleVersion("x"), errno.ESTALE), (FileNotFoundError("x"), errno.ENOENT),
    (PermissionError("x"), errno.EACCES), (FileExistsError("x"), errno.EEXIST),
    (OSError(errno.EROFS, "ro"), errno.EROFS),
    (Unavailable("no worker"), errno.EIO), (UnderStoreError("s3 said 500"), errno.EIO),
    (ValueError("bad"), errno.EIO), (RuntimeError("bug"), errno.EIO),
    (OSError(errno.EHOSTUNREACH, "x"), errno.EIO)])
def test_errno_of(exc, code):
    assert errno_of(exc) == code


def test_stat_of_files_and_directories():
    f = stat_of({"type": "file", "size": 1234, "mtime": 1700000000.5}, False, 7, 8)
    assert stat.S_ISREG(f["st_mode"]) and stat.S_IMODE(f["st_mode"]) == 0o444
    assert (f["st_size"], f["st_uid"], f["st_gid"], f["st_mtime"]) == (1234, 7, 8,
                                                                      1700000000500000000)
    assert f["st_blocks"] == 3
    d = stat_of({"type": "directory", "size": 0}, True, 0, 0)
    assert stat.S_ISDIR(d["st_mode"]) and stat.S_IMODE(d["st_mode"]) == 0o755
    assert stat_of({"type": "file", "size": 0}, True, 0, 0)["st_mode"] & 0o200


def test_pages_are_kept_only_for_the_version_cached_last():
    pc = PageCache()
    assert pc.opened("d/a", "v1", 10) == (False, False, False)   # nothing cached yet
    pc.closed("d/a", "v1", False)
    assert pc.opened("d/a", "v1", 10) == (True, False, False)
    pc.closed("d/a", "v1", False)
    assert pc.opened("d/a", "v2", 10) == (False, False, False)   # a new version: drop
    pc.closed("d/a", "v2", False)


def test_two_versions_never_share_the_pages():
    pc = PageCache()
    pc.opened("d/a", "v1", 10)                       # A reads v1 through the pages
    assert pc.opened("d/a", "v2", 10) == (False, True, False)    # B: around them
    pc.closed("d/a", "v2", True)
    pc.closed("d/a", "v1", False)                    # A refilled v1's pages, then went
    assert pc.opened("d/a", "v2", 10) == (False, False, False)   # C drops them
    assert pc.opened("d/a", "v2", 10) == (True, False, False)    # D keeps C's


def test_a_file_written_or_failed_leaves_the_kernel_view_unknown():
    pc = PageCache()
    pc.opened("d/a", "v1", 10)
    pc.closed("d/a", "v1", False)
    pc.written("d/a")                                # a commit failed or went
    assert pc.opened("d/a", "v1", 10) == (False, False, True)    # drop pages and size


def test_sizes_told_to_the_kernel_say_when_its_attributes_are_stale():
    pc = PageCache(limit=3)
    pc.told("d/a", 10)
    assert pc.opened("d/a", "v1", 11)[2]             # it would cut reads at 10
    pc.closed("d/a", "v1", False)
    assert not pc.opened("d/a", "v1", 11)[2]
    pc.closed("d/a", "v1", False)
    for p in ("d/b", "d/c", "d/d"):                  # over the limit: forgotten ...
        pc.told(p, 1)
    assert pc.opened("d/a", "v1", 11)[2]             # ... so unknown: stale
    assert UNKNOWN < 0


def test_readers_through_the_pages_keep_their_size():
    pc = PageCache()
    pc.opened("d/a", "v1", 8)
    assert pc.held("d/a") == ("v1", 8)        # a stat must not tell the kernel v2's size
    pc.opened("d/a", "v2", 9)                 # around the pages: holds nothing
    pc.closed("d/a", "v2", True)
    assert pc.held("d/a") == ("v1", 8)
    pc.closed("d/a", "v1", False)
    assert pc.held("d/a") is None
