"""The exception types users and peers see.

Owns: every error fluidcache raises on purpose, its wire code, and the translation
between a wire error reply and a Python exception. Families subclass the built-in
OSError types that fsspec users already catch (FileNotFoundError, PermissionError),
so `except FileNotFoundError` works on a `fluid://` path as on a local one.
Never: import anything from fluidcache (this module sits at the bottom).
"""
from __future__ import annotations

import errno


class FluidError(OSError):
    """Base of every fluidcache error. `code` is its name on the wire."""

    code = "error"
    default_errno = errno.EIO

    def __init__(self, message: str = "") -> None:
        super().__init__(self.default_errno, message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # pickles across Ray and multiprocessing
        return (type(self), (self.message,))


class NotFound(FluidError, FileNotFoundError):
    """An unknown dataset, or a path that does not exist in the dataset."""

    code = "not_found"
    default_errno = errno.ENOENT


class AccessDenied(FluidError, PermissionError):
    """A wrong or missing token, or a path that tries to leave its mount (`..`)."""

    code = "access_denied"
    default_errno = errno.EACCES


class InvalidRequest(FluidError, ValueError):
    """A request or argument that is malformed: bad size syntax, bad mount spec, bad op."""

    code = "invalid"
    default_errno = errno.EINVAL


class AlreadyExists(FluidError, FileExistsError):
    code = "exists"
    default_errno = errno.EEXIST


class IsADirectory(FluidError, IsADirectoryError):
    code = "is_dir"
    default_errno = errno.EISDIR


class ProtocolError(FluidError):
    """A frame that breaks the wire protocol: too large, truncated, not msgpack."""

    code = "protocol"
    default_errno = errno.EPROTO


class StaleVersion(FluidError):
    """The file changed in the under store since the caller listed it; re-list and retry."""

    code = "stale"
    default_errno = errno.ESTALE


class NotSupported(FluidError):
    """The under store cannot answer this (e.g. a creation time S3 does not keep)."""

    code = "unsupported"
    default_errno = errno.ENOTSUP


class UnderStoreError(FluidError):
    """The under store (S3, file, ...) failed; the message names what it said."""

    code = "under_store"


class Unavailable(FluidError, ConnectionError):
    """A peer (master or worker) cannot be reached, or no copy of the data is reachable."""

    code = "unavailable"
    default_errno = errno.EHOSTUNREACH


class ClusterNotRunning(Unavailable):
    """No cluster could be found: nothing at FLUIDCACHE_MASTER, no discovery file."""

    code = "not_running"


class NotHere(FluidError):
    """A serving process does not hold this block (or cannot decide this request): ask
    the worker itself, at its `address`."""

    code = "not_here"
    default_errno = errno.EAGAIN


class InternalError(FluidError):
    code = "internal"


_BY_CODE = {
    cls.code: cls
    for cls in (
        FluidError, NotFound, AccessDenied, InvalidRequest, AlreadyExists, IsADirectory,
        ProtocolError, StaleVersion, NotSupported, UnderStoreError, Unavailable,
        ClusterNotRunning, NotHere,
        InternalError,
    )
}


def to_wire(exc: BaseException) -> dict:
    """The error reply body for `exc`. Unexpected exceptions become `internal`."""
    if isinstance(exc, FluidError):
        return {"code": exc.code, "message": exc.message}
    if isinstance(exc, FileNotFoundError):
        return {"code": NotFound.code, "message": str(exc) or "not found"}
    if isinstance(exc, PermissionError):
        return {"code": AccessDenied.code, "message": str(exc) or "access denied"}
    return {"code": InternalError.code, "message": f"{type(exc).__name__}: {exc}"}


def from_wire(body: object) -> FluidError:
    """The exception an error reply stands for; unknown or malformed codes are generic."""
    if not isinstance(body, dict):
        return ProtocolError(f"malformed error reply: {body!r:.200}")
    code = body.get("code")
    cls = _BY_CODE.get(code, FluidError) if isinstance(code, str) else FluidError
    return cls(str(body.get("message", "")))
