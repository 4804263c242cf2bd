"""The data-operation verbs of the Python API (Client's): load, free, pin, unpin, ttl,
rules, du, load_metadata.

Owns: turning these verbs into master calls, and their argument checks.
Never: hold a connection (Client gives `_call` and `_paged`) or talk to workers.
Errors as in api.py: each may raise PermissionError (AccessDenied: a wrong token) and
ConnectionError (Unavailable: no answer from the master in `master_retry` seconds).
"""
from __future__ import annotations

from .client.fs import FluidFileSystem
from .client.fswrite import wait_synced
from .config import parse_duration
from .errors import InvalidRequest
from .loadjob import LoadJob


class DataVerbs:
    """Client's data operations, a part of `api.Client` kept in its own module (never
    made alone). They use what Client gives: `endpoint` (its namespace), `_call(op,
    args)` (one master call) and `_paged(op, args)` (a paged reply's items)."""

    def load_metadata(self, url: str) -> dict:
        """Re-list everything under `fluid://dataset/path` from the under store now.

        Parameters
        ----------
        url
            `fluid://dataset[/path]`.

        Raises
        ------
        FileNotFoundError
            No such dataset or path (NotFound).
        ValueError
            No dataset named, or too many files to walk (InvalidRequest).
        PermissionError, ConnectionError
            A wrong token (AccessDenied); no answer from the master (Unavailable).
        """
        return self._call("metadata_load", self._target(url))

    # -- data operations ---------------------------------------------------------------
    def load(self, url: str, metadata_only: bool = False, replicas: int | None = None,
             wait: bool = True, progress=None) -> "dict | LoadJob":
        """Warm up a file, directory or dataset (`fluid://dataset/path`) on the workers,
        each block onto its owners. Blocks cached already are skipped. With `wait`
        (default) returns the final status, calling `progress(status)` as it goes (Ctrl-C
        cancels the load); else returns a LoadJob to poll, wait for or cancel.

        Parameters
        ----------
        url
            `fluid://dataset[/path]`.
        metadata_only
            Only list (and cache the listings of) everything under it.
        replicas
            Copies of each block to make (1-16; None: the dataset's).
        wait
            Wait for the end (else return a LoadJob).
        progress
            Called with each status while waiting.

        Raises
        ------
        FileNotFoundError
            No such dataset or path (NotFound).
        ValueError
            No dataset named, bad replicas, or too many files (InvalidRequest).
        PermissionError
            A wrong token (AccessDenied).
        ConnectionError
            The master did not answer, the namespace runs too many loads, or workers
            did not take their part (Unavailable).
        """
        if metadata_only:
            return self._call("load", {**self._target(url), "metadata_only": True})
        job = LoadJob(self, self._call("load", {**self._target(url), "replicas": replicas}))
        return job.wait(progress) if wait else job

    def free(self, url: str, force: bool = False) -> dict:
        """Drop the cached blocks under a path on every worker (pinned ones stay unless
        `force`); returns freed blocks and bytes.

        Parameters
        ----------
        url
            `fluid://dataset[/path]`.
        force
            Drop pinned blocks too.

        Raises
        ------
        FileNotFoundError
            No such dataset (NotFound).
        ValueError
            No dataset named (InvalidRequest).
        PermissionError, ConnectionError
            A wrong token (AccessDenied); no answer from the master (Unavailable).
        """
        return self._call("free", {**self._target(url), "force": force})

    def sync(self, url: str, timeout: float | None = None) -> dict:
        """Wait until everything written under a path is in the under store; returns
        {"pending": files still waiting (0 unless `timeout` passed first),
        "pending_bytes", "path", "write_mode"}. Only async-through keeps files waiting
        for their upload; through and cache-through are in the store when `close()`
        returns; must-cache files are never uploaded (not counted).

        Parameters
        ----------
        url
            `fluid://dataset[/path]`.
        timeout
            Seconds to wait at most; None: as long as the uploads take.

        Raises
        ------
        FileNotFoundError, ValueError, PermissionError, ConnectionError
            As `free`.
        """
        return wait_synced(self._call, self._target(url), timeout)

    def pin(self, url: str) -> dict:
        """Keep the path's blocks from eviction, on every worker, across restarts.

        Parameters
        ----------
        url
            `fluid://dataset[/path]`.

        Raises
        ------
        FileNotFoundError
            No such dataset (NotFound).
        ValueError
            No dataset named, or the namespace holds its most pins and TTLs
            (InvalidRequest).
        PermissionError, ConnectionError
            A wrong token (AccessDenied); no answer from the master (Unavailable).
        """
        return self._call("pin", self._target(url))

    def unpin(self, url: str) -> dict:
        """Let the path's blocks be evicted again (undoes `pin`).

        Parameters
        ----------
        url
            `fluid://dataset[/path]`.

        Raises
        ------
        FileNotFoundError
            No such dataset (NotFound).
        ValueError
            No dataset named, or the namespace holds its most pins and TTLs
            (InvalidRequest).
        PermissionError, ConnectionError
            A wrong token (AccessDenied); no answer from the master (Unavailable).
        """
        return self._call("unpin", self._target(url))

    def ttl(self, url: str, duration: str | float | None) -> dict:
        """Drop the path's cached blocks `duration` from now ('10m', 3600; None or
        'never' removes the TTL).

        Parameters
        ----------
        url
            `fluid://dataset[/path]`.
        duration
            '10m', seconds, or None/'never'.

        Raises
        ------
        FileNotFoundError
            No such dataset (NotFound).
        ValueError
            A bad duration, no dataset named, or the namespace holds its most pins and
            TTLs (InvalidRequest).
        PermissionError, ConnectionError
            A wrong token (AccessDenied); no answer from the master (Unavailable).
        """
        seconds = None if duration is None else parse_duration(duration)
        return self._call("ttl", {**self._target(url), "seconds": seconds})

    def rules(self) -> dict:
        """The namespace's pins and TTLs: {"pins": [[ns, ds, path]], "ttls": [...]}.

        Parameters
        ----------
        None

        Raises
        ------
        PermissionError, ConnectionError
            A wrong token (AccessDenied); no answer from the master (Unavailable).
        """
        rows, ns = self._paged("rules"), self.endpoint.namespace
        return {"pins": [[ns, r[1], r[2]] for r in rows if r[0] == "pin"],
                "ttls": [[ns, r[1], r[2], r[3]] for r in rows if r[0] == "ttl"]}

    def du(self, url: str, per_file: bool = False, tiers: bool = False) -> dict:
        """{"path", "files", "total_bytes", "cached_bytes"} (+ "cached_by_file",
        "cached_by_tier"); a block counts once however many copies it has.

        Parameters
        ----------
        url
            `fluid://dataset[/path]`.
        per_file
            Add "cached_by_file" ({path: bytes}), fetched in pages.
        tiers
            Add "cached_by_tier" ({tier: bytes}).

        Raises
        ------
        FileNotFoundError
            No such dataset or path (NotFound).
        ValueError
            No dataset named, or too many files to walk (InvalidRequest).
        PermissionError, ConnectionError
            A wrong token (AccessDenied); no answer from the master (Unavailable).
        """
        out = self._call("du", {**self._target(url), "tiers": tiers})
        if per_file:          # in pages: a large directory never makes one large reply
            by_file: dict[str, int] = {}
            after = None
            while True:
                page = self._call("du", {**self._target(url), "per_file": True,
                                         "after": after})
                by_file.update(page["cached_by_file"])
                after = page["next"]
                if after is None:
                    break
            out["cached_by_file"] = by_file
        return out

    @staticmethod
    def _target(url: str) -> dict:
        ds, _, path = FluidFileSystem._strip_protocol(url).partition("/")
        if not ds:
            raise InvalidRequest(f"{url!r}: name a dataset, as fluid://DATASET[/PATH]")
        return {"ds": ds, "p": path}


__all__ = ["DataVerbs"]
