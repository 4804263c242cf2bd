"""The on-disk block format: the contract between a worker and short-circuit readers.

A block of key K in a tier directory D lives at `D/K[:2]/K.blk`: the block's bytes,
then a 24-byte trailer `b"FCB1" | 4 reserved | u64 length | u64 xxh3_64(K + bytes)`.
The checksum is bound to the key, so a block renamed or misplaced fails verification.
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

import xxhash

MAGIC = b"FCB1"
TRAILER = struct.Struct(">4s4xQQ")
SUFFIX = ".blk"
TMP_PREFIX = ".tmp-"


class CorruptBlock(Exception):
    """A block file whose trailer or checksum does not match; the caller drops it."""


def machine_id() -> str:
    """This machine (and boot): a client whose machine id matches a worker's may read
    that worker's tier directories directly."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


def block_path(tier_dir: str, key: str) -> str:
    return os.path.join(tier_dir, key[:2], key + SUFFIX)


def checksum(key: str, data) -> int:
    h = xxhash.xxh3_64(key.encode())
    h.update(data)
    return h.intdigest()


def write_block(tier_dir: str, key: str, data) -> int:
    """Write atomically; returns the bytes used on disk. Raises OSError (ENOSPC, EACCES)."""
    final = block_path(tier_dir, key)
    sub = os.path.dirname(final)
    os.makedirs(sub, exist_ok=True)
    tmp = os.path.join(sub, f"{TMP_PREFIX}{key}-{uuid.uuid4().hex[:8]}")
    trailer = TRAILER.pack(MAGIC, len(data), checksum(key, data))
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.write(trailer)
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return len(data) + TRAILER.size


def parse(key: str, raw) -> memoryview:
    """The verified data of a whole block file's bytes `raw`; raises CorruptBlock."""
    if len(raw) < TRAILER.size:
        raise CorruptBlock(f"block {key}: {len(raw)} bytes is shorter than its trailer")
    view = memoryview(raw)
    magic, length, digest = TRAILER.unpack_from(view, len(raw) - TRAILER.size)
    if magic != MAGIC or length != len(raw) - TRAILER.size:
        raise CorruptBlock(f"block {key}: bad trailer")
    data = view[:length]
    if checksum(key, data) != digest:
        raise CorruptBlock(f"block {key}: checksum mismatch")
    return data


def read_block(tier_dir: str, key: str) -> memoryview | None:
    """The verified bytes of `key` in `tier_dir`, None if absent; raises CorruptBlock."""
    try:
        with open(block_path(tier_dir, key), "rb") as f:
            raw = f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return parse(key, raw)


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
