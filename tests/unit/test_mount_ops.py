"""The mount's pure parts (issue 20): errno of each failure, stat fields of entries,
when the kernel may keep a file's pages."""
from __future__ import annotations

import errno
import stat

import pytest

from fluidcache.errors import (AccessDenied, IsADirectory, NotFound,
                               NotSupported, StaleVersion, Unavailable, UnderStoreError)
from fluidcache.posix.ops import PageCache, errno_of, stat_of


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
    pc = PageCache(limit=2)
    assert not pc.keep("d/a", "v1")          # first open: nothing cached to keep
    assert pc.keep("d/a", "v1")
    assert not pc.keep("d/a", "v2")          # a new version: drop what the kernel has
    assert pc.keep("d/a", "v2")
    pc.keep("d/b", "v1")
    pc.keep("d/c", "v1")                      # over the limit: forgets, never keeps wrongly
    assert not pc.keep("d/a", "v2")


def test_sizes_told_to_the_kernel_say_when_its_attributes_are_stale():
    pc = PageCache(limit=2)
    assert not pc.stale("d/a", 10)           # never told: the kernel has nothing
    pc.told("d/a", 10)
    assert not pc.stale("d/a", 10) and pc.stale("d/a", 11)
    pc.told("d/b", 5)
    pc.told("d/c", 5)                         # over the limit: forgotten, so unknown
    assert pc.stale("d/a", 10)                # ... counts as stale (costs a refresh)
