"""A file being written to an under store: S3 in parts (PartUpload), local files under a
hidden temporary name (LocalUpload).

PartUpload: one file uploaded to an S3 mount in parts, several in flight while the
client streams.

s3fs's own file object uploads a file's parts one after another, each inside the write
that filled it; here a part goes out as soon as it is full and up to `parallel` parts
are in flight at once, as coroutines on s3fs's own event loop (its connection pool and
its credentials; s3fs's `_call_s3` adds the mount's extra arguments, e.g. encryption).
A file smaller than one part is one PUT at commit. Nothing is visible until commit:
S3 shows a multipart object only when the upload completes; an abort removes the parts.
An exclusive upload ("xb") asks the store with If-None-Match: * on the PUT or the
completion (the caller also looks first: a store that ignores the header is caught by
that look, all but a race of two writers at once).
Owns: the multipart upload's id, its parts and their order, the bytes not yet sent
(at most `parallel + 1` parts per file in memory).
Never: run on the server's event loop (its calls block: the write room runs them in
its threads), or complete an upload with a part missing or failed.
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import tempfile

from .. import names
from ..errors import AlreadyExists

MIN_PART = 5 * 1024**2          # S3's smallest part but the last
DEFAULT_PART = 16 * 1024**2     # 10,000 parts: files up to 156 GiB
MAX_PARTS = 10_000


class PartUpload:
    def __init__(self, fs, path: str, part_size: int = 0, parallel: int = 4,
                 exclusive: bool = False) -> None:
        """`fs`: the mount's S3FileSystem; `path`: "bucket/key"."""
        self.fs = fs
        self.bucket, self.key, _ = fs.split_path(path)
        self.part_size = max(MIN_PART, part_size or DEFAULT_PART)
        self.parallel = max(1, parallel)
        self.match = {"IfNoneMatch": "*"} if exclusive else {}
        self.buf = bytearray()
        self.upload_id: str | None = None
        self.parts: list[cf.Future] = []
        self.size = 0

    # -- the write room's calls (from its threads) ----------------------------------------
    def write(self, data) -> None:
        self.buf += data
        self.size += len(data)
        while len(self.buf) >= self.part_size:
            piece = bytes(self.buf[:self.part_size])
            del self.buf[:self.part_size]
            self._send(piece)

    def commit(self) -> dict:
        """Make the object whole in the store; the store's answer (its ETag...)."""
        try:
            if self.upload_id is None:
                return self._call("put_object", Body=bytes(self.buf), **self.match)
            if self.buf:
                self._send(bytes(self.buf))
                self.buf = bytearray()
            done = [f.result() for f in self.parts]           # raises a part's failure
            return self._call("complete_multipart_upload", UploadId=self.upload_id,
                              MultipartUpload={"Parts": done}, **self.match)
        except FileExistsError:         # s3fs's name for 412 Precondition Failed
            raise AlreadyExists(f"{self.bucket}/{self.key} exists") from None

    def abort(self) -> None:
        """Give the upload up: the parts in flight are let finish (S3 may keep a part
        that lands after the abort), then the upload and its parts are removed."""
        self.buf = bytearray()
        if self.upload_id is not None:
            cf.wait(self.parts, timeout=300)
            upload_id, self.upload_id = self.upload_id, None
            self._call("abort_multipart_upload", UploadId=upload_id)

    # -- parts ------------------------------------------------------------------------------
    def _send(self, piece: bytes) -> None:
        if self.upload_id is None:
            self.upload_id = self._call("create_multipart_upload")["UploadId"]
        if len(self.parts) >= MAX_PARTS:
            raise ValueError(f"a file of more than {MAX_PARTS} parts of "
                             f"{self.part_size >> 20} MiB (raise write_part)")
        while True:                    # at most `parallel` parts in flight
            pending = [f for f in self.parts if not f.done()]
            for f in self.parts[-self.parallel * 2:]:
                if f.done():
                    f.result()        # a failed part fails the write now
            if len(pending) < self.parallel:
                break
            cf.wait(pending, return_when=cf.FIRST_COMPLETED)
        number = len(self.parts) + 1
        self.parts.append(asyncio.run_coroutine_threadsafe(self._part(number, piece),
                                                           self.fs.loop))

    async def _part(self, number: int, piece: bytes) -> dict:
        out = await self.fs._call_s3("upload_part", Bucket=self.bucket, Key=self.key,
                                     UploadId=self.upload_id, PartNumber=number, Body=piece)
        return {"PartNumber": number, "ETag": out["ETag"]}

    def _call(self, method: str, **kwargs) -> dict:
        return self.fs.call_s3(method, Bucket=self.bucket, Key=self.key, **kwargs)



class LocalUpload:
    """A local file written under a hidden temporary name in its own directory (one
    filesystem: the rename is atomic) and renamed over its name at commit; an
    exclusive one is linked instead (os.link fails if the name exists: of two
    exclusive writers one wins). Readers see the old file or the new one, never a mix
    or a half."""

    def __init__(self, path: str, exclusive: bool = False) -> None:
        self.path, self.exclusive = path, exclusive
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=names.WRITING_PREFIX,
                                             suffix=names.WRITING_SUFFIX, dir=parent)
        self.file = os.fdopen(fd, "wb")

    def write(self, data) -> None:
        self.file.write(data)

    def commit(self) -> dict:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            os.fchmod(self.file.fileno(), 0o644)  # mkstemp's 0600 is not what users expect
            st = os.fstat(self.file.fileno())     # ours: another writer may rename next
        except BaseException:
            self.abort()
            raise
        self.file.close()
        if self.exclusive:
            try:
                os.link(self.tmp, self.path)
            except FileExistsError:
                raise AlreadyExists(f"{self.path} exists") from None
            finally:
                os.unlink(self.tmp)
        else:
            os.replace(self.tmp, self.path)
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}

    def abort(self) -> None:
        try:
            self.file.close()                     # (a full disk may fail this flush)
        except OSError:
            pass
        finally:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass


def open_upload(mount, rel: str, exclusive: bool, part_size: int, parallel: int):
    """An upload of `rel` to `mount` (opened; called in a write thread): S3 in parts, a
    local file under a hidden name, another store's own fsspec file. An exclusive one
    fails with AlreadyExists if the file is there."""
    path = mount.under_path(rel)            # opens the filesystem
    mount.fs.invalidate_cache(path)
    if exclusive and mount.fs.exists(path):
        raise AlreadyExists(f"{rel} exists")
    if mount.protocol in ("s3", "s3a"):     # parts in flight while the client sends
        return PartUpload(mount.fs, path, part_size, parallel, exclusive)
    if mount.protocol == "file":            # a hidden name, renamed at commit
        return LocalUpload(mount.fs._strip_protocol(path), exclusive)
    return mount.fs.open(path, "wb")        # other stores: their own file object


def commit_upload(file) -> dict | None:
    """Make an upload visible: the store's answer (ETag..., or a local file's mtime and
    inode), None for another store's file object (its own close uploads it)."""
    if isinstance(file, (PartUpload, LocalUpload)):
        return file.commit()
    file.close()
    return None
