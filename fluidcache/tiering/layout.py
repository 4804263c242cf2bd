"""The on-disk block format: the contract between a worker and short-circuit readers.

A block of key K in a tier directory D lives at `D/K[:2]/K.blk`:

    the block's bytes | owner (UTF-8 'namespace/dataset', n bytes) | 48-byte trailer
    trailer = b"FCB2" | u16 n | 2 reserved | u64 index | 16-byte file id | u64 length
              | u64 xxh3_64(K + bytes + owner + index + file id)

The checksum is bound to the key, so a block renamed or misplaced fails verification.
The owner, file id and index make a block self-describing: a worker that rescans its
tiers after a restart can report what it holds, per dataset and per file.
Writes go to a temporary name in the same directory and are renamed into place, so a
reader in any process sees a whole, verified block or nothing.
Owns: paths, the trailer, atomic write, verified read, rescan. Never: decide what to keep.
"""
from __future__ import annotations

import os
import socket
import struct
import uuid
from collections.abc import Iterator
from typing import NamedTuple

import xxhash

MAGIC = b"FCB2"
TRAILER = struct.Struct(">4sH2xQ16sQQ")
SUFFIX = ".blk"
TMP_PREFIX = ".tmp-"


class CorruptBlock(Exception):
    """A block file whose trailer or checksum does not match; the caller drops it."""


def machine_id() -> str:
    """This machine (and boot): a client whose machine id matches a worker's may read
    that worker's tier directories directly. FLUIDCACHE_MACHINE_ID overrides it: on
    Kubernetes every pod has its own hostname, so the chart sets it to the node's name in
    the worker pods and app pods that share the node's tier directories (hostPath)."""
    override = os.environ.get("FLUIDCACHE_MACHINE_ID")
    if override:
        return override
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


def block_path(tier_dir: str, key: str) -> str:
    return f"{tier_dir}/{key[:2]}/{key}{SUFFIX}"


class Meta(NamedTuple):
    """What a block is: its dataset ('namespace/name'), file id (hex) and index."""

    owner: str = ""
    fid: str = "0" * 32
    index: int = 0


NO_META = Meta()      # a block that says nothing of what it is (tests, tools)


def checksum(key: str, data, meta_bytes: bytes = b"") -> int:
    h = xxhash.xxh3_64(key.encode())
    h.update(data)
    h.update(meta_bytes)
    return h.intdigest()


_MAX_OWNER = 1024
_MAX_TAIL = _MAX_OWNER + TRAILER.size


def _meta_bytes(meta: Meta) -> tuple[bytes, bytes]:
    owner = meta.owner.encode()
    if len(owner) > _MAX_OWNER:
        raise ValueError("block owner name too long")
    return owner, struct.pack(">Q", meta.index) + bytes.fromhex(meta.fid)


def disk_size(data_len: int, meta: Meta = NO_META) -> int:
    """Bytes a block of `data_len` bytes takes on disk (what tier quotas count)."""
    return data_len + len(meta.owner.encode()) + TRAILER.size


def _atomic_write(final: str, key: str, *chunks, mode: int = 0o600) -> None:
    """Write `chunks` to a temporary name beside `final` (created with `mode`, never
    through a symlink), then rename it into place."""
    os.makedirs(os.path.dirname(final), mode=mode | 0o100 | (mode & 0o040) >> 2,
                exist_ok=True)
    tmp = os.path.join(os.path.dirname(final), f"{TMP_PREFIX}{key}-{uuid.uuid4().hex[:8]}")
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode)
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_block(tier_dir: str, key: str, data, meta: Meta = NO_META,
                mode: int = 0o600) -> int:
    """Write atomically (file mode `mode`); returns the bytes used on disk. Raises
    OSError (ENOSPC, EACCES)."""
    owner, fixed = _meta_bytes(meta)
    trailer = TRAILER.pack(MAGIC, len(owner), meta.index, bytes.fromhex(meta.fid), len(data),
                           checksum(key, data, owner + fixed))
    _atomic_write(block_path(tier_dir, key), key, data, owner, trailer, mode=mode)
    return len(data) + len(owner) + TRAILER.size


def _split(key: str, raw) -> tuple[memoryview, Meta, int]:
    if len(raw) < TRAILER.size:
        raise CorruptBlock(f"block {key}: {len(raw)} bytes is shorter than its trailer")
    view = memoryview(raw)
    magic, n, index, fid, length, digest = TRAILER.unpack_from(view, len(raw) - TRAILER.size)
    if magic != MAGIC or length + n + TRAILER.size != len(raw):
        raise CorruptBlock(f"block {key}: bad trailer")
    try:
        owner = bytes(view[length:length + n]).decode()
    except UnicodeDecodeError:
        raise CorruptBlock(f"block {key}: bad owner") from None
    return view[:length], Meta(owner, fid.hex(), index), digest


def parse(key: str, raw, expect: tuple[str, int] | None = None) -> memoryview:
    """The verified data of a whole block file's bytes `raw`; raises CorruptBlock (also
    when `expect`, (file id, index), is not what its trailer names)."""
    data, meta, digest = _split(key, raw)
    if expect is not None and (meta.fid, meta.index) != expect:
        raise CorruptBlock(f"block {key}: its trailer names another file or index")
    owner, fixed = _meta_bytes(meta)
    if checksum(key, data, owner + fixed) != digest:
        raise CorruptBlock(f"block {key}: checksum mismatch")
    return data


def _tail(f, key: str) -> tuple[int, int, bytes, int, int]:
    """(owner length, index, file id, data length, checksum) from an open block file's
    trailer; raises CorruptBlock when the trailer does not describe this file."""
    size = os.fstat(f.fileno()).st_size
    if size < TRAILER.size:
        raise CorruptBlock(f"block {key}: too short")
    f.seek(size - TRAILER.size)
    magic, n, index, fid, length, digest = TRAILER.unpack(f.read(TRAILER.size))
    if magic != MAGIC or length + n + TRAILER.size != size:
        raise CorruptBlock(f"block {key}: bad trailer")
    return n, index, fid, length, digest


def read_meta(path: str, key: str) -> Meta:
    """A block file's owner, file id and index, from its tail only (the data is verified
    when it is read). Raises CorruptBlock or OSError."""
    with open(path, "rb") as f:
        n, index, fid, length, _ = _tail(f, key)
        f.seek(length)
        try:
            return Meta(f.read(n).decode(), fid.hex(), index)
        except UnicodeDecodeError:
            raise CorruptBlock(f"block {key}: bad owner") from None


def read_block(tier_dir: str, key: str,
               expect: tuple[str, int] | None = None) -> memoryview | None:
    """The verified bytes of `key` in `tier_dir`, None if absent; raises CorruptBlock."""
    try:
        with open(block_path(tier_dir, key), "rb") as f:
            raw = f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return parse(key, raw, expect)


def remove_block(tier_dir: str, key: str) -> None:
    try:
        os.unlink(block_path(tier_dir, key))
    except FileNotFoundError:
        pass


def scan(tier_dir: str) -> Iterator[tuple[str, int]]:
    """(key, bytes on disk) of every block file; deletes leftover temporaries."""
    try:
        subs = os.scandir(tier_dir)
    except FileNotFoundError:
        return
    with subs:
        for sub in subs:
            if not sub.is_dir(follow_symlinks=False) or len(sub.name) != 2:
                continue
            for entry in os.scandir(sub.path):
                if entry.name.startswith(TMP_PREFIX):
                    try:
                        os.unlink(entry.path)
                    except OSError:
                        pass
                elif entry.name.endswith(SUFFIX) and entry.is_file(follow_symlinks=False):
                    yield entry.name[: -len(SUFFIX)], entry.stat().st_size


def copy_block(src_dir: str, dst_dir: str, key: str, mode: int = 0o600) -> bool:
    """Copy a block file as it is (data, owner and trailer) after verifying it; atomic at
    the destination. False if the source is gone; raises CorruptBlock or OSError."""
    try:
        with open(block_path(src_dir, key), "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return False
    parse(key, raw)
    _atomic_write(block_path(dst_dir, key), key, raw, mode=mode)
    return True


def open_exact(tier_dir: str, key: str, length: int, expect: tuple[str, int] | None = None):
    """(fd, owner + index + file id, checksum) of block `key` if its file holds exactly
    `length` data bytes; None if absent or of another length. Reads the tail only, with
    pread (no Python file object: this is the short-circuit and serving hot path); the
    caller verifies the data (or sends it with the checksum) and closes `fd`."""
    try:
        fd = os.open(block_path(tier_dir, key), os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        tail = os.pread(fd, _MAX_TAIL + 1, length)
        if len(tail) < TRAILER.size or len(tail) > _MAX_TAIL:
            os.close(fd)
            return None
        magic, n, index, fid, got, digest = TRAILER.unpack_from(tail, len(tail) - TRAILER.size)
        if magic != MAGIC:
            raise CorruptBlock(f"block {key}: bad trailer")
        if got != length or n + TRAILER.size != len(tail):
            os.close(fd)
            return None
        if expect is not None and (fid.hex(), index) != expect:
            raise CorruptBlock(f"block {key}: its trailer names another file or index")
        return fd, tail[:n] + struct.pack(">Q", index) + fid, digest
    except BaseException:
        os.close(fd)
        raise


def meta_bytes(owner: str, fid: str, index: int) -> bytes:
    """What a block's checksum covers after its data: owner, index and file id."""
    return owner.encode() + struct.pack(">Q", index) + bytes.fromhex(fid)


def read_exact(tier_dir: str, key: str, length: int,
               expect: tuple[str, int] | None = None) -> bytes | None:
    """The verified bytes of block `key` when its file holds exactly `length` bytes of
    data (what the reader expects), as one bytes object read straight from the file:
    no copy beyond the read itself. None if absent or of another length; raises
    CorruptBlock or OSError."""
    found = open_exact(tier_dir, key, length, expect)
    if found is None:
        return None
    fd, meta_bytes, digest = found
    try:
        data = os.pread(fd, length, 0)
        if len(data) < length:          # more than 2 GiB, or truncated under us
            rest = bytearray(data)
            while len(rest) < length:
                more = os.pread(fd, length - len(rest), len(rest))
                if not more:
                    raise CorruptBlock(f"block {key}: truncated")
                rest += more
            data = bytes(rest)
    finally:
        os.close(fd)
    if checksum(key, data, meta_bytes) != digest:
        raise CorruptBlock(f"block {key}: checksum mismatch")
    return data


def read_block_into(tier_dir: str, key: str, out: memoryview,
                    expect: tuple[str, int] | None = None) -> bool:
    """Read the whole block `key` straight into `out` (its exact length) and verify it:
    no intermediate copy. False if absent or of another length; raises CorruptBlock."""
    found = open_exact(tier_dir, key, len(out), expect)
    if found is None:
        return False
    fd, meta_bytes, digest = found
    try:
        got = 0
        while got < len(out):
            k = os.preadv(fd, [out[got:]], got)
            if not k:
                raise CorruptBlock(f"block {key}: truncated")
            got += k
    finally:
        os.close(fd)
    if checksum(key, out, meta_bytes) != digest:
        raise CorruptBlock(f"block {key}: checksum mismatch")
    return True
