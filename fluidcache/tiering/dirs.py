"""Tier directories: which worker and which cluster a directory belongs to.

A tier path (e.g. `/dev/shm/fluidcache-<uid>`) may be shared by several workers on one
machine (a multi-node Ray cluster on one host) and outlive the cluster that filled it.
Each worker claims `path`, or `path/w1`, `path/w2`...: the first one no live worker holds
(an flock on `.lock`). The claimed directory carries the identity of its cluster in
`.cluster`; blocks found under another cluster's identity (or none) are removed, never
adopted, so a cluster only ever serves what it cached itself. A restarted worker of the
same cluster finds its blocks again. `release` removes a memory tier when the cluster
stops.
Only block files (`xx/KEY.blk` and leftover temporaries) and our own markers are ever
removed; anything else in a tier directory is left alone.
A tier directory must be ours: a real directory (not a symlink) owned by this user, not
writable or readable by others (0700; 0750 with `group`, for pods that share an fsGroup),
below directories that only root or we control (a sticky /tmp or /dev/shm is fine). One
we own with a looser mode is tightened; one owned by someone else, a symlink, or one
below a directory another user owns is refused (another local user could read every
namespace's blocks, or swap the directory and plant their own).
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import stat

from .layout import SUFFIX, TMP_PREFIX

log = logging.getLogger(__name__)
MARKER, LOCK = ".cluster", ".lock"
_SUB = re.compile(r"^[0-9a-f]{2}\Z")


class TierDirError(RuntimeError):
    """A tier directory that is not safely ours: the worker refuses to start on it."""


def dir_mode(group: bool) -> int:
    return 0o750 if group else 0o700


def file_mode(group: bool) -> int:
    return 0o640 if group else 0o600


def _check_ancestors(d: str) -> None:
    """Nobody else can swap `d` away: every directory above it belongs to root or to us,
    and one others may write into (/tmp, /dev/shm) has the sticky bit (only the owner of
    an entry may rename or remove it)."""
    me = os.geteuid()
    real = os.path.realpath(d)
    cur = "/"
    for part in real.strip("/").split("/")[:-1]:
        cur = os.path.join(cur, part)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:         # not made yet: we make it, as ours
            return
        if st.st_uid not in (0, me):
            raise TierDirError(f"{cur}, above the tier directory {d}, belongs to uid "
                               f"{st.st_uid}: it could swap the tier away; refusing (choose "
                               "a path under directories of root or of this user)")
        if stat.S_IMODE(st.st_mode) & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise TierDirError(f"{cur}, above the tier directory {d}, is writable by others "
                               "and not sticky: refusing")


def ensure_private(d: str, group: bool = False, trust_parents: bool = False) -> None:
    """Create `d` (and missing parents) if absent; then check it is a real directory
    owned by us with no access for others (tightening our own), under directories only
    root or we control (unless `trust_parents`: a container's own volume, whose other
    writers are the pod's own containers). TierDirError else."""
    if not trust_parents:
        _check_ancestors(d)               # before making anything below them
    os.makedirs(d, mode=dir_mode(group), exist_ok=True)
    if not trust_parents:
        _check_ancestors(d)
    st = os.lstat(d)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise TierDirError(f"tier directory {d} is a symlink or not a directory: refusing "
                           "it (remove it, or choose another path)")
    if st.st_uid != os.geteuid():
        raise TierDirError(f"tier directory {d} belongs to uid {st.st_uid}, not to this user "
                           f"({os.geteuid()}): refusing it (another user could read or plant "
                           "blocks); remove it or choose another path")
    allowed = dir_mode(group)
    if stat.S_IMODE(st.st_mode) & ~allowed:
        log.warning("tier directory %s had mode %o: tightened to %o", d,
                    stat.S_IMODE(st.st_mode), allowed)
        os.chmod(d, allowed)


def claim_dir(path: str, cluster_id: str, held: list, group: bool = False,
              trust_parents: bool = False) -> str:
    """A tier directory under `path` for this worker, holding only `cluster_id`'s blocks,
    as a path with no symlinks in it (one re-pointed later changes nothing for us). The
    flock's descriptor is appended to `held` (kept for the worker's life)."""
    ensure_private(path, group, trust_parents)
    path = os.path.realpath(path)
    for n in range(64):
        d = path if n == 0 else os.path.join(path, f"w{n}")
        ensure_private(d, group, trust_parents)
        fd = os.open(os.path.join(d, LOCK), os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        held.append(fd)
        _adopt(d, cluster_id)
        return d
    raise RuntimeError(f"no free tier directory under {path}")


def owner_of(d: str) -> str | None:
    try:
        with open(os.path.join(d, MARKER)) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _adopt(d: str, cluster_id: str) -> None:
    """Make `d` this cluster's: another cluster's blocks (or blocks of no known
    cluster) are removed first."""
    if not cluster_id or owner_of(d) == cluster_id:
        return
    removed = clear_blocks(d)
    if removed:
        log.warning("tier %s held %d blocks of another cluster: removed", d, removed)
    tmp = os.path.join(d, MARKER + ".tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(cluster_id + "\n")
    os.replace(tmp, os.path.join(d, MARKER))


def clear_blocks(d: str) -> int:
    """Remove every block file (and leftover temporary) in tier directory `d`; returns
    how many. Subdirectories that are not block subdirectories are not touched."""
    n = 0
    try:
        subs = [e for e in os.scandir(d) if _SUB.match(e.name) and
                e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return 0
    for sub in subs:
        for entry in os.scandir(sub.path):
            if entry.name.endswith(SUFFIX) or entry.name.startswith(TMP_PREFIX):
                try:
                    os.unlink(entry.path)
                    n += entry.name.endswith(SUFFIX)
                except OSError:
                    pass
        try:
            os.rmdir(sub.path)
        except OSError:
            pass
    return n


def release(d: str, base: str) -> None:
    """Remove a tier directory's blocks and markers, then the directory itself and its
    base when they are empty (a stopped cluster gives its memory back)."""
    clear_blocks(d)
    for name in (MARKER, LOCK):
        try:
            os.unlink(os.path.join(d, name))
        except FileNotFoundError:
            pass
    for p in (d, base) if d != base else (d,):
        try:
            os.rmdir(p)
        except OSError:          # not empty: another worker's directory is inside
            pass
