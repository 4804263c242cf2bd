"""Who may read what on a worker: namespace tokens and dataset records, asked of the master.

Owns: the tokens of every namespace (asked again when an unknown one shows up, at most
once a second for all requests together), the dataset records (mounts, options, weak
scope) a worker resolves reads with, each trusted `record_ttl` seconds and at most
`records_kept` kept (the first fetched go first), and forgetting a dataset the master
no longer knows (`on_forget` drops what other rooms hold of it).
Never: decide who may read what (the master does; a wrong token is refused here only
after asking it again), or speak to the master other than through the two injected
callables: `ask_tokens() -> {namespace: token}` and `ask_dataset(ns, name) -> record`,
both awaited on the data server's loop.
A worker serving cached blocks still asks the master: for each dataset's record every
`record_ttl` seconds it is read, and for tokens when a new namespace shows up.
"""
from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from ..dataset import Dataset
from ..errors import AccessDenied, NotFound


class Record(NamedTuple):
    expires: float         # time.monotonic() after which it is asked for again
    dataset: Dataset
    weak_scope: str        # what this dataset's weak versions must carry


class Access:
    def __init__(self, ask_tokens: Callable[[], Awaitable[dict]],
                 ask_dataset: Callable[[str, str], Awaitable[dict]],
                 record_ttl: float, records_kept: int,
                 on_forget: Callable[[str, str], None]) -> None:
        self._ask_tokens, self._ask_dataset = ask_tokens, ask_dataset
        self._ttl, self._kept, self._on_forget = record_ttl, records_kept, on_forget
        self._records: dict[tuple[str, str], Record] = {}
        self._tokens: dict[str, str] = {}
        self._tokens_at = 0.0
        self._token_refresh: asyncio.Future | None = None
        self.on_tokens: Callable[[], None] | None = None   # told when the table is new

    # -- tokens ------------------------------------------------------------------------
    @property
    def tokens(self) -> dict[str, str]:
        """The token table as last asked of the master (replaced whole, never changed)."""
        return self._tokens

    def token_ok(self, ns, token) -> bool:
        """Is `token` the token of namespace `ns`, as far as we know now (no waiting)?"""
        expected = self._tokens.get(ns or "")
        return expected is not None and hmac.compare_digest((token or "").encode(),
                                                            expected.encode())

    async def authorize(self, ns, token) -> None:
        """Return if `token` is namespace `ns`'s, else raise AccessDenied."""
        if self.token_ok(ns, token):
            return
        # maybe a namespace made since we last asked: ask the master again, at most once a
        # second for all requests together (a fresh token waits, a wrong one is refused)
        await self.refresh()
        if not self.token_ok(ns, token):
            raise AccessDenied(f"wrong or missing token for namespace {ns!r}")

    async def refresh(self) -> None:
        """Ask the master for the token table (one request in flight for all callers, at
        most one a second); the worker does so once when it starts, for its serving
        processes."""
        if self._token_refresh is None or self._token_refresh.done():
            self._token_refresh = asyncio.ensure_future(self._refresh_tokens())
        await asyncio.shield(self._token_refresh)

    async def _refresh_tokens(self) -> None:
        wait = 1.0 - (time.monotonic() - self._tokens_at)
        if wait > 0:
            await asyncio.sleep(wait)          # the rate limit on master lookups
        self._tokens = await self._ask_tokens()
        self._tokens_at = time.monotonic()
        if self.on_tokens is not None:
            self.on_tokens()

    # -- dataset records -----------------------------------------------------------------
    def held(self, ns: str, name: str) -> Record | None:
        """The dataset's record if we hold one still trusted (no waiting), else None."""
        rec = self._records.get((ns, name))
        if rec is None or rec.expires < time.monotonic():
            return None
        return rec

    async def dataset(self, ns: str, name: str, fresh: bool = False,
                      max_age: float | None = None) -> Record:
        """The dataset's record, asked of the master when we hold none, ours is older than
        `record_ttl` (or `max_age` seconds) or `fresh` asks for a new one. A dataset the
        master no longer knows is forgotten here and by `on_forget`, and NotFound raised."""
        rec = self._records.get((ns, name))
        now = time.monotonic()
        if rec is None or fresh or rec.expires < now or \
                (max_age is not None and rec.expires - self._ttl + max_age < now):
            try:
                got = await self._ask_dataset(ns, name)
            except Exception as exc:
                if "no dataset" in str(exc):
                    self.forget(ns, name)
                    raise NotFound(f"no dataset {name!r} in namespace {ns!r}") from None
                raise
            rec = Record(time.monotonic() + self._ttl, Dataset.from_record(got),
                         got.get("weak_scope", ""))
            self._records[(ns, name)] = rec
            while len(self._records) > self._kept:
                self._records.pop(next(iter(self._records)))
        return rec

    def forget(self, ns: str, name: str) -> None:
        self._records.pop((ns, name), None)
        self._on_forget(ns, name)
