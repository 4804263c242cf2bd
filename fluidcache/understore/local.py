"""What a local (file://) mount serves: the files under its root, reached through real
directories, and symbolic links to such files. Never a link to a directory (so no walk
follows one and `rm -r` never empties what it leads to), one leading out of the root,
one that dangles or loops, or anything inside a `fluidcache mount` (which would ask this
cluster again from within its own request).

Paths are resolved here component by component (`real_path`), so nothing inside a
fluidcache mount is ever stat'ed, however a path or a link chain reaches it; the root's
real path is resolved again on every request (a `current -> v2` link re-pointed, even
onto a reused inode). The check is by path: a link swapped between it and the open by
someone who can write the host directory is not caught.
Owns: those rules, the local listing and a local directory's removal.
"""
from __future__ import annotations

import errno
import os
import select
import stat
import threading

from ..errors import AccessDenied, IsADirectory, NotFound

MAX_LINKS = 40                      # as the kernel: more links on one path is a loop


class _FluidMounts:
    """Where `fluidcache mount`s are on this machine. /proc/self/mountinfo is read again
    only when the kernel says the mount table changed (poll: POLLPRI), so asking costs
    a poll, never a stale answer; nothing here touches a mount."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._file = self._poll = None
        self._found: frozenset[str] = frozenset()

    def __call__(self) -> frozenset[str]:
        with self._lock:
            try:
                if self._file is None:
                    self._file = open("/proc/self/mountinfo")     # kept open: polled
                    self._poll = select.poll()
                    self._poll.register(self._file, select.POLLPRI | select.POLLERR)
                    changed = True
                else:
                    changed = bool(self._poll.poll(0))
                if changed:
                    from ..posix.mount import FSTYPE, parse_mountinfo
                    self._file.seek(0)
                    self._found = frozenset(mp for mp, kind in
                                            parse_mountinfo(self._file.read()).items()
                                            if kind == FSTYPE)
            except (OSError, AttributeError):   # no /proc (or no poll): none to avoid
                return frozenset()
            return self._found


fluid_mountpoints = _FluidMounts()


def within(path: str, dirs) -> bool:
    """Is absolute, normalized `path` one of `dirs` or below one?"""
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


_END = object()                     # on the stack below a link's target: it is done


def real_path(path: str, avoid) -> str | None:
    """The real path of absolute `path`, its links followed one component at a time, or
    None where it reaches into one of the mounts `avoid` (never stat'ed inside), passes
    more than MAX_LINKS links (a loop) or follows a link whose target is missing.
    Components that do not exist yet and come from `path` itself (a file or
    directories about to be written) are taken as they are."""
    todo: list = [c for c in path.split("/") if c][::-1]     # the next component last
    done, links, in_link = "/", 0, 0
    while todo:
        c = todo.pop()
        if c is _END:
            in_link -= 1
            continue
        if c == ".":
            continue
        if c == "..":
            done = os.path.dirname(done)
            continue
        nxt = os.path.join(done, c)
        if within(nxt, avoid):
            return None
        try:
            st = os.lstat(nxt)
        except (FileNotFoundError, NotADirectoryError):
            if in_link:
                return None                             # a link whose target is missing
            rest = os.path.normpath(os.path.join(nxt, *reversed(todo)))
            return None if within(rest, avoid) else rest
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                return None
            target = os.readlink(nxt)
            if target.startswith("/"):
                done = "/"
            todo.append(_END)
            todo.extend(reversed([t for t in target.split("/") if t]))
            in_link += 1
            continue
        done = nxt
    return done


def check(root: str, rel: str, path: str) -> None:
    """Raise unless local `path` (= root + rel) is served (see the module's rules)."""
    avoid = fluid_mountpoints()
    real_root = os.path.realpath(root)
    direct = f"{real_root.rstrip(os.sep)}{os.sep}{rel}" if rel else real_root
    where = rel or "/"
    if within(direct, avoid):
        raise NotFound(f"{where}: a fluidcache mount, not part of the store")
    real = real_path(path, avoid)
    if real is None:
        raise NotFound(f"{where}: a symbolic link that dangles, loops or leads into a "
                       "fluidcache mount is not served")
    if real == direct:                                  # no link on the way
        return
    if not within(real, [real_root]):
        raise AccessDenied(f"{where}: a symbolic link leads outside the mount")
    if real_path(os.path.dirname(path), avoid) != os.path.dirname(direct) or \
            os.path.isdir(real):
        raise NotFound(f"{where}: a symbolic link to a directory is not served")


def serves_link(link: str, real_root: str, avoid) -> str | None:
    """The real path of the file link `link` leads to when it is served, else None."""
    real = real_path(link, avoid)
    if real is None or not within(real, [real_root]) or os.path.isdir(real):
        return None
    return real


def list_dir(path: str, root: str, entry) -> list[dict]:
    """A local directory's entries as `entry(path, stat)` (a file: itself), as served."""
    avoid = fluid_mountpoints()
    real_root = os.path.realpath(root)
    real_dir = real_path(path, avoid)
    if real_dir is None:
        raise NotFound(f"{path}: not served")
    st = os.stat(real_dir)
    if not stat.S_ISDIR(st.st_mode):
        return [entry(path, st)]
    out = []
    with os.scandir(real_dir) as it:
        for e in it:
            try:
                if within(os.path.join(real_dir, e.name), avoid):
                    continue
                if e.is_symlink():
                    real = serves_link(e.path, real_root, avoid)
                    if real is None:
                        continue
                    est = os.stat(real)
                else:
                    est = e.stat()
                out.append(entry(os.path.join(path, e.name), est))
            except OSError:                 # gone, unreadable
                continue
    return out


def remove_dir(path: str, root: str) -> None:
    """Remove local directory `path` if it holds nothing that is served: links that are
    not served (never listed) go with it, their targets untouched; anything else makes
    it IsADirectory, and nothing is removed."""
    try:
        os.rmdir(path)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    avoid, real_root = fluid_mountpoints(), os.path.realpath(root)
    with os.scandir(path) as it:
        entries = list(it)
    if any(not e.is_symlink() or serves_link(e.path, real_root, avoid) is not None
           for e in entries):
        raise IsADirectory(f"{path.rsplit('/', 1)[-1]} is not empty")
    for e in entries:
        try:
            os.unlink(e.path)
        except FileNotFoundError:
            pass
    os.rmdir(path)


__all__ = ["check", "fluid_mountpoints", "list_dir", "real_path", "remove_dir"]
