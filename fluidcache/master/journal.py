"""The master's journal: what cannot be rebuilt from worker reports survives a restart.

The cluster's identity, namespaces, tokens and grants, datasets and mounts, pins and
TTLs are appended as records to `journal.log`; `snapshot.msgpack` holds the whole state
as of a record count, and the log is cut after each snapshot. A record is
`u32 length | u32 xxh32(body) | body` (msgpack). Replay stops at the first torn or
corrupt record: a crash mid-append loses only that record, never what came before it;
whatever follows an unreadable record is set aside in `journal.log.damaged-N` (and
said in the log), never dropped silently. A record that is whole but cannot be decoded
or applied is skipped with an error, and the records after it are replayed.

`encode`/`decode` are pure; `Journal` is the file shell (append, fsync, snapshot).
"""
from __future__ import annotations

import logging
import os
import struct

import msgpack
import xxhash

log = logging.getLogger(__name__)
_HEAD = struct.Struct(">II")
MAX_RECORD = 16 * 1024 * 1024


def encode(record: dict) -> bytes:
    body = msgpack.packb(record, use_bin_type=True)
    return _HEAD.pack(len(body), xxhash.xxh32_intdigest(body)) + body


def decode(data: bytes, max_record: int = MAX_RECORD) -> tuple[list, int]:
    """The whole records at the start of `data`, and how many bytes they take. A record
    whose checksum holds but whose body is not a msgpack map comes back as None (the
    caller skips it and goes on)."""
    records, pos = [], 0
    while pos + _HEAD.size <= len(data):
        n, digest = _HEAD.unpack_from(data, pos)
        end = pos + _HEAD.size + n
        if n > max_record or end > len(data):
            break
        body = data[pos + _HEAD.size:end]
        if xxhash.xxh32_intdigest(body) != digest:
            break
        try:
            rec = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception:  # noqa: BLE001 - whole (checksummed) but not ours to read
            rec = None
        records.append(rec if isinstance(rec, dict) else None)
        pos = end
    return records, pos


class JournalError(OSError):
    """The journal cannot be written or read; the change was not made."""


def _open_private(path: str, mode: str):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | (os.O_APPEND if "a" in mode else os.O_TRUNC),
                 0o600)
    return os.fdopen(fd, mode)


class Journal:
    """An append-only record file plus a snapshot, in one directory."""

    def __init__(self, directory: str, fsync: bool = True) -> None:
        self.dir = directory
        self.fsync = fsync
        os.makedirs(directory, mode=0o700, exist_ok=True)    # it holds tokens and credentials
        os.chmod(directory, 0o700)
        self.log_path = os.path.join(directory, "journal.log")
        self.snap_path = os.path.join(directory, "snapshot.msgpack")
        self._f = None
        self.appended = 0

    def load(self) -> tuple[dict | None, list[dict]]:
        """(snapshot state or None, records after it). Cuts a torn tail off the log."""
        snapshot = None
        try:
            with open(self.snap_path, "rb") as f:
                raw = f.read()
            snaps, _ = decode(raw, max_record=len(raw))
            if not snaps or snaps[0] is None:   # never start empty over it: say so
                raise JournalError(f"the snapshot {self.snap_path} is unreadable")
            snapshot = snaps[0]
        except FileNotFoundError:
            pass
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        records, valid = decode(data)
        if valid < len(data):
            kept = self._set_aside(data[valid:])
            log.error("journal %s: %d bytes after record %d are unreadable (a torn append "
                      "or damage); set aside in %s", self.log_path, len(data) - valid,
                      len(records), kept)
            with open(self.log_path, "r+b") as f:
                f.truncate(valid)
        return snapshot, records

    def _set_aside(self, tail: bytes) -> str:
        n = 0
        while os.path.exists(f"{self.log_path}.damaged-{n}"):
            n += 1
        path = f"{self.log_path}.damaged-{n}"
        with _open_private(path, "wb") as f:
            f.write(tail)
        return path

    def append(self, record: dict) -> None:
        """Append durably, or raise JournalError and leave the log as it was (a failed
        append, e.g. a full disk, must not leave half a record for the next one)."""
        if self._f is None:
            self._f = _open_private(self.log_path, "ab")
        start = os.path.getsize(self.log_path)    # every earlier append was flushed
        try:
            self._f.write(encode(record))
            self._f.flush()
            if self.fsync:
                os.fsync(self._f.fileno())
        except OSError as exc:
            self._f.close()
            self._f = None
            try:
                os.truncate(self.log_path, start)
            except OSError:
                pass
            raise JournalError(f"cannot write the journal {self.log_path}: {exc}") from None
        self.appended += 1

    def snapshot(self, state: dict) -> None:
        """Write `state` atomically, then start an empty log."""
        tmp = self.snap_path + ".tmp"
        with _open_private(tmp, "wb") as f:
            f.write(encode(state))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.snap_path)
        dirfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dirfd)          # the rename is durable before the log is cut
        finally:
            os.close(dirfd)
        if self._f is not None:
            self._f.close()
        self._f = _open_private(self.log_path, "wb")
        self.appended = 0

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
