"""A running load (`Client.load(..., wait=False)`): poll it, wait for it, cancel it.

Owns: polling one load job's status through its client.
Never: start a load (Client.load does) or talk to workers.
"""
from __future__ import annotations

import time


class LoadJob:
    """A running load: `status()` (files, bytes and blocks done, state), `wait()`,
    `cancel()`. States: running, done, failed (some blocks could not be cached; see
    `errors`), cancelled."""

    def __init__(self, client, status: dict) -> None:
        """`client`: the Client that started the load; `status`: the load's reply."""
        self.client, self.id, self.last = client, status["job"], status

    def status(self) -> dict:
        """The load's status now (asks the master); raises as Client's verbs do."""
        self.last = self.client._call("load_status", {"job": self.id, "poll": True})
        return self.last

    def cancel(self) -> dict:
        """Cancel the load; returns its status (raises as Client's verbs do)."""
        self.last = self.client._call("load_cancel", {"job": self.id})
        return self.last

    def wait(self, progress=None, interval: float = 0.25) -> dict:
        """Poll until the load ends; Ctrl-C cancels it (and re-raises)."""
        try:
            st = self.last
            while st["state"] == "running":
                if progress is not None:
                    progress(st)
                time.sleep(interval)          # polling the master for progress
                st = self.status()
            if progress is not None:
                progress(st)
            return st
        except KeyboardInterrupt:
            self.cancel()
            raise


__all__ = ["LoadJob"]
