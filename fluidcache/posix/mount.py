"""`fluidcache mount` and `unmount`: a dataset as a directory, served by a daemon.

`mount` starts the daemon (this same command with --foreground, in its own session,
its log beside its record) and returns once the kernel shows the mount live, or says
why the daemon ended. The daemon serves until it is unmounted (`unmount`, `umount`,
`fusermount3 -u`) or sent SIGTERM, SIGINT or SIGHUP (libfuse then unmounts it cleanly).
A record per mountpoint (its daemon's pid, the URL, the log) lets `unmount` end the
daemon, and lets `mount`/`unmount` find a mount whose daemon died (the kernel answers
ENOTCONN there) and clean it up.
Owns: records, the daemon's start and end, the stale-mount cleanup.
Never: serve a file operation (ops.py does).
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import xxhash

from ..cluster import alive
from ..config import default_home
from ..errors import AlreadyExists, InvalidRequest, NotFound, NotSupported, Unavailable

START_TIMEOUT = 60.0         # seconds `mount` waits for the daemon's mount to be live
STOP_TIMEOUT = 30.0          # seconds `unmount` waits for the daemon to end
MAX_TIMEOUT = 60.0           # the longest the kernel keeps an entry or attributes
WRITABLE_TIMEOUT = 1.0       # ... of a dataset that takes writes (others' closes show)


def records() -> Path:
    return default_home() / "mounts"


def _record_path(mountpoint: str) -> Path:
    return records() / f"{xxhash.xxh3_64_hexdigest(mountpoint.encode())}.json"


def record(mountpoint: str) -> dict | None:
    try:
        return json.loads(_record_path(mountpoint).read_text())
    except (OSError, ValueError):
        return None


FSTYPE = "fuse.fluidcache"
PROBE_TIMEOUT = 5.0          # seconds to ask a mount of ours with no record if it answers


def mount_table() -> dict[str, str]:
    """Mountpoint -> filesystem type of what is mounted (the last of stacked mounts),
    from /proc/self/mountinfo: nothing here touches a mount (which may hang)."""
    with open("/proc/self/mountinfo") as f:
        return parse_mountinfo(f.read())


def parse_mountinfo(text: str) -> dict[str, str]:
    """Mountpoint -> filesystem type, from the text of a /proc/PID/mountinfo."""
    out = {}
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) > 4 and right:
            mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            out[mp] = right.split()[0]
    return out


def _answers(mountpoint: str) -> bool:
    """Does the mount answer statfs within PROBE_TIMEOUT (False: ENOTCONN, its daemon
    is gone)? A daemon that does not answer at all counts as alive."""
    box: list = []

    def ask():
        try:
            os.statvfs(mountpoint)
            box.append(True)
        except OSError as exc:
            box.append(exc.errno not in (errno.ENOTCONN, errno.ECONNABORTED))
    t = threading.Thread(target=ask, daemon=True)
    t.start()
    t.join(PROBE_TIMEOUT)
    return box[0] if box else True


def state(mountpoint: str) -> str:
    """"live" (a mount of ours whose daemon runs), "stale" (one whose daemon is gone),
    "other" (another filesystem is mounted here), "absent" (nothing is)."""
    kind = mount_table().get(mountpoint)
    if kind is None:
        return "absent"
    if kind != FSTYPE:
        return "other"
    rec = record(mountpoint)
    if rec is not None:
        return "live" if alive(int(rec["pid"])) else "stale"
    return "live" if _answers(mountpoint) else "stale"     # a mount of another home


def _fusermount(mountpoint: str, lazy: bool = False) -> subprocess.CompletedProcess:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        cmd = ["umount"] + (["-l"] if lazy else []) + [mountpoint]
    else:
        cmd = [tool, "-u"] + (["-z"] if lazy else []) + [mountpoint]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=STOP_TIMEOUT)


def _forget(mountpoint: str) -> None:
    rec = record(mountpoint)
    if rec is not None and not alive(int(rec["pid"])):
        _record_path(mountpoint).unlink(missing_ok=True)


def where(mountpoint: str) -> str:
    """The mountpoint's path as the kernel lists it: its parent resolved, the mountpoint
    itself never looked at (a mount whose daemon is stopped would hang that)."""
    path = os.path.abspath(mountpoint)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def _check_mountpoint(mountpoint: str) -> str:
    mp = where(mountpoint)
    st = state(mp)
    if st == "stale":                         # its daemon died: cleaned up
        _fusermount(mp, lazy=True)
        st = state(mp)
    _forget(mp)
    if st == "live":
        rec = record(mp)
        owner = f" (by pid {rec['pid']}: {rec['url']})" if rec else ""
        raise AlreadyExists(f"{mp} is a mount already{owner}; `fluidcache unmount {mp}`")
    if st == "other":
        raise AlreadyExists(f"{mp}: another filesystem is mounted there")
    if not os.path.isdir(mp):
        raise NotFound(f"{mp}: no such directory to mount on")
    return mp


def _check_url(url: str) -> None:
    if not url.startswith("fluid://") or not url[len("fluid://"):].strip("/"):
        raise InvalidRequest(f"{url!r}: mount one dataset, fluid://DATASET[/PATH]")


def mount(url: str, mountpoint: str, allow_other: bool = False) -> dict:
    """Start a daemon serving `url` at `mountpoint`; return its record once the mount is
    live. Raises with the daemon's last log lines if it ended first."""
    _check_url(url)
    mp = _check_mountpoint(mountpoint)
    records().mkdir(parents=True, exist_ok=True)
    logfile = _record_path(mp).with_suffix(".log")
    cmd = [sys.executable, "-m", "fluidcache.cli", "mount", url, mp, "--foreground"]
    if allow_other:
        cmd.append("--allow-other")
    with open(logfile, "wb") as out:             # this daemon's log only
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:           # polling a condition: the mount is live
        if proc.poll() is not None:
            raise Unavailable(f"mount of {url} on {mp} failed: {_tail(logfile)}")
        rec = record(mp)
        if rec is not None and rec["pid"] == proc.pid and state(mp) == "live":
            return rec
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    raise Unavailable(f"mount of {url} on {mp} was not live after {START_TIMEOUT:.0f} s: "
                      f"{_tail(logfile)}")


def _tail(logfile: Path, lines: int = 3) -> str:
    try:
        text = logfile.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return "(no log)"
    return " | ".join(text) or "(the log is empty)"


def unmount(mountpoint: str) -> bool:
    """Unmount a mount of ours and wait for its daemon to end; True if one was there.
    A stale mount (its daemon died) is cleaned up; a daemon that does not end is
    killed. Raises if it is busy, or if what is mounted there is not ours."""
    mp = where(mountpoint)
    st = state(mp)
    if st == "other":
        raise NotSupported(f"{mp} is not a fluidcache mount ({mount_table().get(mp)}): "
                           "left alone")
    if st != "live":
        if st == "stale":
            _fusermount(mp, lazy=True)
        _forget(mp)
        return st == "stale"
    rec = record(mp)
    try:
        done = _fusermount(mp)
    except subprocess.TimeoutExpired:        # a daemon that does not answer
        done = None
        _fusermount(mp, lazy=True)
    if done is not None and done.returncode != 0:
        msg = (done.stderr or done.stdout).strip()
        if "busy" in msg.lower():
            raise OSError(errno.EBUSY, f"{mp} is busy (a process has files open or its "
                                       f"working directory there): {msg}")
        raise Unavailable(f"unmounting {mp}: {msg}")
    if rec is not None:
        pid = int(rec["pid"])
        deadline = time.monotonic() + STOP_TIMEOUT
        while alive(pid) and time.monotonic() < deadline:   # polling: the daemon ends
            time.sleep(0.05)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
        _record_path(mp).unlink(missing_ok=True)
    return True


def kernel_timeout(about: dict) -> float:
    """How long the kernel keeps a mount's entries and attributes, from its dataset
    (`dataset show`): a writable one's briefly (others' closes show), else as long as
    the dataset's sync policy lets a listing stand, at most MAX_TIMEOUT."""
    if about.get("write_mode", "read-only") != "read-only":
        return WRITABLE_TIMEOUT
    sync = about.get("sync_seconds")
    return MAX_TIMEOUT if sync is None or sync < 0 else min(float(sync), MAX_TIMEOUT)


def serve(url: str, mountpoint: str, allow_other: bool = False) -> int:
    """The daemon: mount `url` at `mountpoint` and serve until unmounted or signalled
    (SIGTERM, SIGINT, SIGHUP: libfuse unmounts). Files still open for writing then are
    not committed, as if their writer had been killed."""
    from ..client.fs import FluidFileSystem
    from .ops import MAX_READ, FluidOps, Mount

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _check_url(url)
    mp = _check_mountpoint(mountpoint)
    records().mkdir(parents=True, exist_ok=True)
    # one daemon per mountpoint: held until it ends (two started at once: one mounts)
    lock = open(_record_path(mp).with_suffix(".lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise AlreadyExists(f"{mp} is being mounted by another daemon") from None
    mp = _check_mountpoint(mp)                 # as it is now that we hold the lock
    fs = FluidFileSystem()
    root = fs._strip_protocol(url)
    ds = root.partition("/")[0]
    if fs.info(root)["type"] != "directory":
        raise NotSupported(f"fluid://{root} is a file: mount a dataset or a directory")
    about = fs.client.cluster.dataset(ds)
    writable = about.get("write_mode", "read-only") != "read-only"
    timeout = kernel_timeout(about)
    ops = FluidOps(fs, root, writable, timeout)
    _record_path(mp).write_text(json.dumps({"pid": os.getpid(), "mountpoint": mp,
                                            "url": f"fluid://{root}",
                                            "writable": writable}))
    opts = {"fsname": f"fluid://{root}", "subtype": "fluidcache", "ro": not writable,
            "max_read": MAX_READ, "default_permissions": True}
    if allow_other:
        opts["allow_other"] = True
    log = logging.getLogger("fluidcache.mount")
    log.info("serving fluid://%s on %s (%s, timeouts %.1f s)", root, mp,
             "read-write" if writable else "read-only", timeout)
    try:
        Mount(ops, mp, foreground=True, raw_fi=True, **opts)
    except RuntimeError as exc:
        # libfuse's main loop ends with 8 when a signal stopped it (it unmounted)
        if exc.args != (8,) or state(mp) == "live":
            raise
        log.info("stopped by a signal: unmounted %s", mp)
    finally:
        rec = record(mp)
        if rec is not None and rec.get("pid") == os.getpid():
            _record_path(mp).unlink(missing_ok=True)
        lock.close()
    return 0


__all__ = ["FSTYPE", "kernel_timeout", "mount", "mount_table", "parse_mountinfo", "record",
           "serve", "state", "unmount"]
