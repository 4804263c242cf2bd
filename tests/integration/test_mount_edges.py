"""The mount where an outsider pushed on it (issue 20): the kernel's page cache never
mixes two versions or serves bytes that were not committed, writes never report a
success they did not have, odd names and flags get clear errors, unmount touches only
our mounts."""
from __future__ import annotations

import ctypes
import errno
import os
import signal
import subprocess
import sys

import fsspec
import pytest

from fluidcache.posix import mount as fmount

from ..helpers import run_cli, wait_for
from .test_mount import _mount, _unmount

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two(cluster, tmp_path_factory):
    """A read-only and a writable (through) dataset over local directories, mounted."""
    root = tmp_path_factory.mktemp("edges")
    ro, rw = root / "ro", root / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "same.bin").write_bytes(b"1" * 100_000)
    (ro / "big.bin").write_bytes(b"a" * (8 << 20))
    client = cluster["client"]
    client.create_dataset("edro", {"/": f"file://{ro}"})
    client.create_dataset("edrw", {"/": f"file://{rw}"}, write_mode="through")
    mro, mrw = root / "mro", root / "mrw"
    mro.mkdir()
    mrw.mkdir()
    _mount("fluid://edro", mro)
    _mount("fluid://edrw", mrw)
    yield {"ro": ro, "rw": rw, "mro": mro, "mrw": mrw}
    _unmount(mro)
    _unmount(mrw)


def _relist(path: str) -> None:
    fs = fsspec.filesystem("fluid", skip_instance_cache=True)
    fs.info(path, refresh=True)


def _read_fd(fd: int, at: int, n: int) -> bytes:
    return os.pread(fd, n, at)


def _reads(path, want: bytes) -> bool:
    """Does a new open read `want`? (ESTALE: it opened the version listed before the
    store changed, in the second before the mount hears of the new listing: again.)"""
    try:
        return path.read_bytes() == want
    except OSError as exc:
        if exc.errno != errno.ESTALE:
            raise
        return False


def test_an_old_handle_and_a_new_version_never_share_pages(two):
    ro, mro = two["ro"], two["mro"]
    a = os.open(mro / "same.bin", os.O_RDONLY)
    try:
        assert _read_fd(a, 0, 100_000) == b"1" * 100_000      # A: v1 in the pages
        (ro / "same.bin").write_bytes(b"2" * 100_000)         # same size, new bytes
        _relist("fluid://edro/same.bin")
        wait_for(lambda: _reads(mro / "same.bin", b"2" * 100_000), timeout=30,
                 what="a new open to read the new version")
        assert _read_fd(a, 0, 100_000) == b"1" * 100_000      # A keeps its version
    finally:
        os.close(a)
    for _ in range(2):                                        # after A: v2, twice
        assert (mro / "same.bin").read_bytes() == b"2" * 100_000


def test_one_open_reads_one_version_while_the_store_changes(two):
    ro, mro = two["ro"], two["mro"]
    with open(mro / "big.bin", "rb", buffering=0) as a:
        first = a.read(4 << 20)
        (ro / "big.bin").write_bytes(b"b" * (8 << 20))
        _relist("fluid://edro/big.bin")
        wait_for(lambda: _reads(mro / "big.bin", b"b" * (8 << 20)), timeout=30,
                 what="a new open to read the new version")
        try:
            rest = a.read()
        except OSError as exc:                  # its version left the store: said so
            assert exc.errno == errno.ESTALE
        else:
            assert first + rest == b"a" * (8 << 20)          # never half and half


def test_appends_and_in_place_changes_are_refused_never_lost(two):
    mrw, rw = two["mrw"], two["rw"]
    (mrw / "log.txt").write_bytes(b"one\n")
    for mode in ("ab", "r+b"):
        with pytest.raises(OSError) as e:
            open(mrw / "log.txt", mode)
        assert e.value.errno == errno.ENOTSUP
    assert (rw / "log.txt").read_bytes() == b"one\n"


def test_a_refused_write_commits_nothing_and_close_says_so(two):
    mrw, rw = two["mrw"], two["rw"]
    fd = os.open(mrw / "zip.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.write(fd, b"A" * 10)
    with pytest.raises(OSError) as e:
        os.pwrite(fd, b"B", 0)                  # out of order
    assert e.value.errno == errno.ENOTSUP
    with pytest.raises(OSError):
        os.write(fd, b"C")                      # the handle has failed
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.errno == errno.ENOTSUP
    assert not (rw / "zip.bin").exists()


def test_a_child_closing_an_inherited_descriptor_does_not_commit(two):
    mrw, rw = two["mrw"], two["rw"]
    fd = os.open(mrw / "inh.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.write(fd, b"line 1\n")
    subprocess.run(["/bin/true"], pass_fds=(fd,), check=True)     # its exit: a flush
    (mrw / "other.txt").write_bytes(b"x")
    os.write(fd, b"line 2\n")
    os.close(fd)
    assert (rw / "inh.txt").read_bytes() == b"line 1\nline 2\n"


def test_a_loop_of_children_writing_one_redirect_commits_once(two):
    mrw, rw = two["mrw"], two["rw"]
    subprocess.run(["sh", "-c", f"for i in 1 2 3 4 5; do /bin/echo $i; done > {mrw}/loop.txt"],
                   check=True)
    assert (rw / "loop.txt").read_bytes() == b"1\n2\n3\n4\n5\n"
    assert (mrw / "loop.txt").read_bytes() == b"1\n2\n3\n4\n5\n"


def test_a_write_after_a_commit_never_takes_another_writers_bytes(two):
    mrw, rw = two["mrw"], two["rw"]
    fd = os.open(mrw / "mix.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.write(fd, b"writer-1 line 1\n")
    os.fsync(fd)                                      # committed: in the store now
    assert (rw / "mix.txt").read_bytes() == b"writer-1 line 1\n"
    (mrw / "mix.txt").write_bytes(b"WRITER-2 ENTIRE FILE\n")     # another writer
    try:
        os.write(fd, b"writer-1 line 2\n")
    except OSError as exc:
        assert exc.errno == errno.ESTALE               # refused, not mixed
    finally:
        try:
            os.close(fd)
        except OSError as exc:
            assert exc.errno == errno.ESTALE
    got = (rw / "mix.txt").read_bytes()
    assert got in (b"WRITER-2 ENTIRE FILE\n", b"writer-1 line 1\nwriter-1 line 2\n"), got


def test_fsync_puts_the_file_in_the_store(two):
    mrw, rw = two["mrw"], two["rw"]
    with open(mrw / "sync.bin", "wb") as f:
        f.write(b"s" * 1000)
        f.flush()
        os.fsync(f.fileno())
        assert (rw / "sync.bin").read_bytes() == b"s" * 1000
        f.write(b"t")
    assert (rw / "sync.bin").read_bytes() == b"s" * 1000 + b"t"


def test_a_failed_commit_leaves_the_stores_bytes_readable(two):
    mrw, rw = two["mrw"], two["rw"]
    fd = os.open(mrw / "ex.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    os.write(fd, b"N" * 6000)
    (rw / "ex.bin").write_bytes(b"O" * 5000)          # another writer got there first
    with pytest.raises(OSError) as e:
        os.close(fd)                                   # O_EXCL: the commit fails
    assert e.value.errno == errno.EEXIST
    assert (rw / "ex.bin").read_bytes() == b"O" * 5000
    _relist("fluid://edrw/ex.bin")
    wait_for(lambda: _reads(mrw / "ex.bin", b"O" * 5000), timeout=30,
             what="the mount to read what the store holds")


def test_rename_flags_odd_names_and_statfs(two):
    mrw = two["mrw"]
    (mrw / "x1").write_bytes(b"1")
    (mrw / "x2").write_bytes(b"2")
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    rc = libc.renameat2(at_fdcwd, str(mrw / "x1").encode(), at_fdcwd,
                        str(mrw / "x2").encode(), rename_exchange)
    assert rc == -1 and ctypes.get_errno() == errno.EINVAL
    assert (mrw / "x1").read_bytes() == b"1" and (mrw / "x2").read_bytes() == b"2"
    with pytest.raises(OSError) as e:
        open(mrw / ("n" * 300), "wb")
    assert e.value.errno == errno.ENAMETOOLONG
    with pytest.raises(FileNotFoundError):
        os.stat(os.path.join(os.fsencode(mrw), b"bad\xff"))
    st = os.statvfs(mrw)
    assert st.f_bavail > 0 and st.f_namemax == 255


def test_a_reader_is_never_cut_by_a_writer_or_a_stat(two):
    mrw, rw = two["mrw"], two["rw"]
    (mrw / "cut.bin").write_bytes(b"r" * (8 << 20))
    with open(mrw / "cut.bin", "rb", buffering=0) as a:
        first = a.read(1 << 20)
        with pytest.raises(OSError) as e:                 # not replaced under a reader
            open(mrw / "cut.bin", "wb")
        assert e.value.errno == errno.ETXTBSY
        (rw / "cut.bin").write_bytes(b"s" * 1000)         # replaced in the store ...
        _relist("fluid://edrw/cut.bin")
        os.stat(mrw / "cut.bin")                           # ... and stat'ed here
        try:
            rest = a.read()
        except OSError as exc:
            assert exc.errno == errno.ESTALE               # its version is gone: said so
        else:
            assert len(first + rest) == 8 << 20            # never cut silently


def test_an_append_onto_a_file_the_kernel_has_not_seen_is_refused(two):
    mrw, rw = two["mrw"], two["rw"]
    with pytest.raises(FileNotFoundError):
        os.stat(mrw / "ap1")                               # the kernel caches: absent
    (rw / "ap1").write_bytes(b"IMPORTANT\n")               # another writer makes it
    _relist("fluid://edrw/ap1")
    for flags in (os.O_APPEND | os.O_CREAT, os.O_CREAT):
        try:
            fd = os.open(mrw / "ap1", os.O_WRONLY | flags)
        except OSError as exc:
            assert exc.errno == errno.ENOTSUP
            continue
        os.write(fd, b"appended\n")
        with pytest.raises(OSError) as e:                  # the store is asked at commit
            os.close(fd)
        assert e.value.errno == errno.EEXIST
    assert (rw / "ap1").read_bytes() == b"IMPORTANT\n"


def test_unmount_of_a_stopped_daemon_does_not_hang(cluster, tmp_path):
    import threading
    mp = tmp_path / "m"
    mp.mkdir()
    _mount("fluid://mixed", mp)
    pid = int(fmount.record(str(mp))["pid"])
    os.kill(pid, signal.SIGSTOP)
    try:
        # once the mount is gone, let the daemon run on so it can end
        t = threading.Thread(target=lambda: (wait_for(lambda: fmount.state(str(mp))
                                                       != "live", timeout=60,
                                                       what="the unmount"),
                                              os.kill(pid, signal.SIGCONT)), daemon=True)
        t.start()
        p = subprocess.run([sys.executable, "-m", "fluidcache.cli", "unmount", str(mp)],
                           capture_output=True, text=True, timeout=90)
        assert p.returncode == 0, p.stderr
        assert fmount.state(str(mp)) == "absent"
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        run_cli("unmount", str(mp), check=False)


def test_unmount_leaves_other_filesystems_alone(cluster):
    assert fmount.state("/") == "other"
    p = run_cli("unmount", "/", check=False)
    assert p.returncode == 1 and "not a fluidcache mount" in p.stderr
    assert os.path.exists("/proc/self/mountinfo")


def test_two_daemons_at_once_make_one_mount(cluster, tmp_path):
    mp = tmp_path / "m"
    mp.mkdir()
    procs = [subprocess.Popen([sys.executable, "-m", "fluidcache.cli", "mount",
                               "fluid://mixed", str(mp), "--foreground"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    try:
        wait_for(lambda: fmount.state(str(mp)) == "live", timeout=60, what="a mount")
        loser = wait_for(lambda: next((p for p in procs if p.poll() is not None), None),
                         timeout=60, what="one daemon to refuse")
        assert loser.returncode == 1 and b"mount" in loser.stderr.read()
        with open("/proc/self/mountinfo") as f:
            assert sum(f" {mp} " in line for line in f) == 1
    finally:
        run_cli("unmount", str(mp), check=False)
        for p in procs:
            p.wait(60)
    assert fmount.state(str(mp)) == "absent"


def test_a_mount_inside_its_own_local_store_is_never_looked_into(cluster, tmp_path):
    """Mounted inside the directory it serves, the mount is no part of the store: listing
    the directory (through fluid:// or through the mount) leaves it out at once, and a
    path through it is not found; nothing asks the mount from within its own request."""
    store = tmp_path / "store"
    (store / "sub").mkdir(parents=True)
    (store / "a.bin").write_bytes(b"a" * 1000)
    cluster["client"].create_dataset("edself", {"/": f"file://{store}"})
    inner = store / "mnt"
    inner.mkdir()
    _mount("fluid://edself", inner)
    try:
        fs = fsspec.filesystem("fluid", skip_instance_cache=True)
        assert sorted(fs.ls("fluid://edself", detail=False, refresh=True)) == \
            ["edself/a.bin", "edself/sub"]
        assert sorted(os.listdir(inner)) == ["a.bin", "sub"]
        assert (inner / "a.bin").read_bytes() == b"a" * 1000
        with pytest.raises(FileNotFoundError):
            fs.info("fluid://edself/mnt/a.bin", refresh=True)
        assert not os.path.exists(inner / "mnt")
    finally:
        _unmount(inner)
