"""`fluidcache mount` (issue 20): a dataset as a directory that plain tools use in their
own processes (cat, cmp, sha256sum, find, tar, Python's open, pandas, pyarrow, a
torchvision-style folder walk), sizes and listings equal to the store, EROFS on a
read-only dataset, writes through a writable one, a worker killed during reads, and
unmount/SIGTERM/a killed daemon leaving no process and no mount behind."""
from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import threading

import pytest

from fluidcache.posix import mount as fmount

from ..helpers import run_cli, status, wait_for

pytestmark = pytest.mark.integration


def _mount(url: str, mp, check: bool = True):
    p = run_cli("mount", url, str(mp), check=False)
    if p.returncode != 0 and ("/dev/fuse" in p.stderr or "not permitted" in p.stderr):
        pytest.skip(f"the kernel refuses a FUSE mount here: {p.stderr.strip()[:300]}")
    if check:
        assert p.returncode == 0, p.stderr
    return p


def _pid(mp) -> int:
    return int(fmount.record(os.path.realpath(mp))["pid"])


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _unmount(mp) -> None:
    pid = _pid(mp) if fmount.record(os.path.realpath(mp)) else None
    run_cli("unmount", str(mp))
    assert fmount.state(str(mp)) == "absent" and not os.path.ismount(mp)
    if pid is not None:
        wait_for(lambda: _gone(pid), timeout=30, what="the daemon to end")


def _sh(*cmd: str, cwd=None) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=120)
    assert p.returncode == 0, f"{cmd}: {p.stderr}"
    return p.stdout


@pytest.fixture(scope="module")
def mnt(cluster, tmp_path_factory):
    mp = tmp_path_factory.mktemp("mnt")
    _mount("fluid://mixed", mp)
    yield mp
    _unmount(mp)


def test_plain_tools_read_the_dataset_in_their_own_processes(mnt, dataset_files, tmp_path):
    # find: the listing equals the store's
    found = _sh("find", str(mnt), "-type", "f").split()
    assert sorted(os.path.relpath(f, mnt) for f in found) == sorted(dataset_files)
    for name, body in dataset_files.items():
        assert os.stat(mnt / name).st_size == len(body), name
    # sha256sum and cat, in their own processes
    names = sorted(dataset_files)
    out = _sh("sha256sum", *names, cwd=mnt)
    got = dict(reversed(line.split("  ", 1)) for line in out.splitlines())
    assert got == {n: hashlib.sha256(dataset_files[n]).hexdigest() for n in names}
    assert _sh("cat", str(mnt / "small/a.txt")) == "hello fluid\n"
    # cmp against a copy of the store's bytes
    ref = tmp_path / "big.bin"
    ref.write_bytes(dataset_files["multi/big.bin"])
    _sh("cmp", str(ref), str(mnt / "multi/big.bin"))
    # tar of a directory: every member's bytes as the store's
    _sh("tar", "cf", str(tmp_path / "i.tar"), "-C", str(mnt), "images", "deep")
    _sh("tar", "xf", str(tmp_path / "i.tar"), "-C", str(tmp_path))
    for name in (n for n in names if n.startswith(("images/", "deep/"))):
        assert (tmp_path / name).read_bytes() == dataset_files[name], name


def test_python_pandas_pyarrow_and_a_folder_walk(mnt, dataset_files):
    code = f"""
import hashlib, json, os, sys
import pandas as pd, pyarrow.parquet as pq
root = {str(mnt)!r}
out = {{"csv": len(pd.read_csv(os.path.join(root, "tables/data.csv"))),
        "parquet": pq.read_table(os.path.join(root, "tables/data.parquet")).num_rows}}
# torchvision's ImageFolder: class directories walked, each file opened and read
walk = {{}}
for d, _, files in os.walk(os.path.join(root, "images")):
    for f in sorted(files):
        with open(os.path.join(d, f), "rb") as fh:
            walk[f] = hashlib.sha256(fh.read()).hexdigest()
out["walk"] = walk
with open(os.path.join(root, "multi/big.bin"), "rb") as fh:   # seeks and partial reads
    fh.seek(1_000_000); a = fh.read(70_000); fh.seek(10); b = fh.read(5)
out["parts"] = [a.hex(), b.hex()]
print(json.dumps(out))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    import json
    out = json.loads(p.stdout)
    assert out["csv"] == 2000 and out["parquet"] == 2000
    assert out["walk"] == {n.split("/")[1]: hashlib.sha256(b).hexdigest()
                           for n, b in dataset_files.items() if n.startswith("images/")}
    big = dataset_files["multi/big.bin"]
    assert out["parts"] == [big[1_000_000:1_070_000].hex(), big[10:15].hex()]


def test_a_read_only_dataset_refuses_writes_with_erofs(mnt):
    for act in (lambda: open(mnt / "new.txt", "wb"), lambda: os.mkdir(mnt / "d"),
                lambda: os.unlink(mnt / "one.bin"), lambda: open(mnt / "one.bin", "ab"),
                lambda: os.rename(mnt / "one.bin", mnt / "two.bin")):
        with pytest.raises(OSError) as e:
            act()
        assert e.value.errno == errno.EROFS
    with pytest.raises(FileNotFoundError):
        open(mnt / "no/such.bin", "rb")
    assert os.path.getsize(mnt / "one.bin") == 1            # still serving


def test_a_second_mount_on_a_live_one_is_refused(mnt):
    p = _mount("fluid://mixed", mnt, check=False)
    assert p.returncode == 1 and "is a mount already" in p.stderr


def test_writes_through_the_mount_reach_the_store(cluster, moto, tmp_path):
    s3 = moto.filesystem()
    s3.mkdir("fc-mountw")
    cluster["client"].create_dataset("mountw", {"/": "s3://fc-mountw/w"}, moto.options(),
                                     write_mode="through")
    mp = tmp_path / "w"
    mp.mkdir()
    _mount("fluid://mountw", mp)
    try:
        body = os.urandom(3_000_001)
        src = tmp_path / "src.bin"
        src.write_bytes(body)
        _sh("cp", str(src), str(mp / "copied.bin"))
        _sh("cmp", str(src), str(mp / "copied.bin"))       # read back at once, whole
        # a shell's redirection: open, dup2, close (a flush), then writes
        _sh("sh", "-c", f"echo one > {mp}/log.txt; "
                        f"(exec 3>{mp}/dup.txt; echo a >&3; exec 4>&3; exec 3>&-; "
                        f"echo b >&4)")
        assert (mp / "log.txt").read_text() == "one\n"
        assert (mp / "dup.txt").read_text() == "a\nb\n"
        os.mkdir(mp / "sub")
        _sh("tar", "cf", str(tmp_path / "t.tar"), "-C", str(tmp_path), "src.bin")
        _sh("tar", "xf", str(tmp_path / "t.tar"), "-C", str(mp / "sub"))
        os.rename(mp / "sub/src.bin", mp / "sub/moved.bin")
        os.unlink(mp / "log.txt")
        s3.invalidate_cache()
        assert s3.cat_file("fc-mountw/w/copied.bin") == body
        assert s3.cat_file("fc-mountw/w/sub/moved.bin") == body
        assert s3.cat_file("fc-mountw/w/dup.txt") == b"a\nb\n"
        assert not s3.exists("fc-mountw/w/log.txt")
        assert not s3.exists("fc-mountw/w/sub/src.bin")
        with pytest.raises(OSError) as e:                       # no writing in place
            open(mp / "copied.bin", "r+b")
        assert e.value.errno == errno.ENOTSUP
    finally:
        _unmount(mp)


def test_reads_go_on_while_the_worker_is_killed(mnt, cluster, dataset_files):
    names = [n for n in sorted(dataset_files) if n.startswith(("images/", "multi/"))]
    want = {n: dataset_files[n] for n in names}
    done, errors, passes = threading.Event(), [], [0]

    def reader():                       # through the kernel, bypassing its page cache
        try:
            while not done.is_set():
                for n in names:
                    fd = os.open(mnt / n, os.O_RDONLY | os.O_DIRECT)
                    try:
                        got = b""
                        while chunk := os.read(fd, 1 << 20):
                            got += chunk
                    finally:
                        os.close(fd)
                    assert got == want[n], n
                passes[0] += 1
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    try:
        wait_for(lambda: passes[0] >= 1 or errors, what="a first pass")
        pid = status()["workers"][0]["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: next((w for w in status()["workers"]
                               if w["alive"] and w["pid"] != pid), None), timeout=120,
                 what="the worker to be restarted")
        target = passes[0] + 2
        wait_for(lambda: passes[0] >= target or errors, timeout=120, what="reads to go on")
    finally:
        done.set()
        t.join(120)
    assert not errors, errors


def test_a_file_changed_in_the_store_is_read_whole_never_cut(cluster, tmp_path):
    import fsspec
    data = tmp_path / "data"
    data.mkdir()
    (data / "f.txt").write_bytes(b"v1")
    cluster["client"].create_dataset("mchg", {"/": f"file://{data}"})
    mp = tmp_path / "m"
    mp.mkdir()
    _mount("fluid://mchg", mp)
    try:
        assert (mp / "f.txt").read_bytes() == b"v1"          # the kernel holds v1's size
        fs = fsspec.filesystem("fluid", skip_instance_cache=True)
        for old, new in ((b"v1", b"version two is longer"), (b"version two is longer",
                                                            b"3")):
            (data / "f.txt").write_bytes(new)
            assert fs.info("fluid://mchg/f.txt", refresh=True)["size"] == len(new)

            def read(old=old, new=new):
                got = (mp / "f.txt").read_bytes()
                assert got in (old, new), got                 # never cut, never mixed
                return got == new
            wait_for(read, timeout=30, what="the mount to read the new version")
    finally:
        _unmount(mp)


def test_sigterm_unmounts_and_a_dead_daemon_is_cleaned_up(cluster, tmp_path):
    mp = tmp_path / "m"
    mp.mkdir()
    try:
        _mount("fluid://mixed", mp)
        pid = _pid(mp)
        os.kill(pid, signal.SIGTERM)                # libfuse unmounts, the daemon ends
        wait_for(lambda: _gone(pid), timeout=30, what="the daemon to end")
        assert fmount.state(str(mp)) == "absent" and fmount.record(str(mp)) is None
        _mount("fluid://mixed", mp)
        pid = _pid(mp)
        os.kill(pid, signal.SIGKILL)                # the mount stays, dead: ENOTCONN
        wait_for(lambda: _gone(pid), timeout=30, what="the daemon to die")
        assert fmount.state(str(mp)) == "stale"
        _mount("fluid://mixed", mp)                 # the next mount cleans it up
        assert os.path.getsize(mp / "one.bin") == 1
        pid = _pid(mp)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: _gone(pid), timeout=30, what="the daemon to die")
        assert "unmounted" in run_cli("unmount", str(mp)).stdout   # ... and so does unmount
        assert fmount.state(str(mp)) == "absent" and fmount.record(str(mp)) is None
        assert "nothing is mounted" in run_cli("unmount", str(mp)).stdout
    finally:
        run_cli("unmount", str(mp), check=False)    # whatever happened, nothing left


def test_bad_mounts_get_clear_errors(cluster, tmp_path):
    for url, what in (("fluid://nosuch", "no such dataset"), ("s3://b/x", "fluid://"),
                      ("fluid://mixed/one.bin", "is a file")):
        p = run_cli("mount", url, str(tmp_path), check=False)
        assert p.returncode == 1 and what in p.stderr, (url, p.stderr)
        assert fmount.state(str(tmp_path)) == "absent"
    p = run_cli("mount", "fluid://mixed", str(tmp_path / "nodir"), check=False)
    assert p.returncode == 1 and "no such directory" in p.stderr
