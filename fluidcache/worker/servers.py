"""The worker's serving processes (serve.py): started, fed, heard, restarted, stopped.

Owns: the listening sockets (one per process, all bound to `serve_port` or one free port
with SO_REUSEPORT, so the kernel spreads connections over them; made here and held while
the worker lives, so the port is never free for another user's process to take, and a
restarted process takes over its slot's socket and its waiting connections) and the
processes (`serve_processes` of them), the line protocol with each (settings
first, then the token table and map version whenever they change; its reports back,
handed to `on_report`), restarting one that dies or stops reporting (hung: killed after
`hung_after` seconds without a report; with backoff) and stopping them all (their stdin
closes: they end; after a grace period they are killed).
Never: answer a read (serve.py does) or apply a report (the worker's rooms do).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from ..backoff import Backoff

log = logging.getLogger(__name__)
_START_TIMEOUT = 30.0
HUNG_AFTER = 15.0         # seconds without a report (they report every 0.5 s): killed


def count_of(configured: int) -> int:
    """Serving processes to run: as configured; -1 is one per core, at most 4."""
    if configured >= 0:
        return configured
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1))


class Servers:
    def __init__(self, count: int, settings: dict, on_report: Callable[[dict], None],
                 state: Callable[[], tuple[dict, int]]) -> None:
        """`settings`: serve.py's (host, port, tier paths, block size, limits ...);
        `on_report(report)`: called from a reader thread for every report; `state()`:
        (token table, map version) now, sent to the processes when it changes."""
        self.count, self.settings = count, dict(settings)
        self.on_report, self.state = on_report, state
        self.procs: list[subprocess.Popen | None] = [None] * count
        self.socks: list[socket.socket] = []
        self.port = 0
        self.hung_after = HUNG_AFTER
        self.errors = {"pe": 0, "to": 0, "ev": 0, "st": 0}   # of processes that ended
        self.killed_hung = 0
        self._last: dict[int, dict] = {}                # slot -> its latest counters
        self._heard: dict[int, float] = {}              # slot -> when it last reported
        self._sent: dict[int, tuple] = {}               # slot -> (tokens, mv) sent
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._stopping = threading.Event()

    def start(self) -> "Servers":
        host = self.settings.get("host", "127.0.0.1")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            for _ in range(self.count):
                self.socks.append(socket.create_server(
                    (host, self.port or self.settings.get("port", 0)), family=family,
                    backlog=1024, reuse_port=True))
                self.port = self.socks[0].getsockname()[1]
            for slot in range(self.count):
                self._spawn(slot)
        except BaseException:
            self.stop()
            raise
        threading.Thread(target=self._watch, daemon=True, name="fluidcache-serve-watch").start()
        return self

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p is not None and p.poll() is None]

    @property
    def alive(self) -> bool:
        """Is any of them up (else the worker does not advertise their port)?"""
        return bool(self.pids)

    def counters(self) -> dict:
        """Protocol errors, timeouts, evictions and stalled reports of every serving
        process, so far."""
        with self._lock:
            total = dict(self.errors)
            for c in self._last.values():
                for k in total:
                    total[k] += c.get(k, 0)
        return total

    # -- one process ---------------------------------------------------------------------
    def _spawn(self, slot: int) -> None:
        tokens, mv = self.state()
        fd = self.socks[slot].fileno()
        settings = dict(self.settings, port=self.port, fd=fd, tokens=tokens)
        proc = subprocess.Popen([sys.executable, "-m", "fluidcache.worker.serve"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                close_fds=True, pass_fds=(fd,))
        proc.stdin.write(json.dumps(settings) + "\n")
        proc.stdin.flush()
        first = _readline(proc, _START_TIMEOUT)
        try:
            if json.loads(first)["port"] != self.port:
                raise ValueError("another port")
        except (ValueError, KeyError, TypeError):
            proc.kill()
            proc.wait()
            raise RuntimeError(f"a serving process did not start: {first!r:.200}") from None
        self.procs[slot] = proc
        self._heard[slot] = time.monotonic()
        self._sent[slot] = (dict(tokens), None)
        self._push(slot, proc)
        threading.Thread(target=self._listen, args=(slot, proc), daemon=True,
                         name=f"fluidcache-serve-{slot}").start()

    def _push(self, slot: int, proc: subprocess.Popen) -> None:
        """Send the token table and map version if they changed since last sent."""
        with self._write_lock:               # the worker's loop and the listeners push
            tokens, mv = self.state()
            if self._sent.get(slot) == (tokens, mv):
                return
            try:
                proc.stdin.write(json.dumps({"tokens": tokens, "mv": mv}) + "\n")
                proc.stdin.flush()
                self._sent[slot] = (dict(tokens), mv)
            except (OSError, ValueError):
                pass                         # it is ending: _listen restarts it

    def push(self) -> None:
        """Send every process the token table and map version, if they changed."""
        for slot, proc in enumerate(self.procs):
            if proc is not None:
                self._push(slot, proc)

    def _listen(self, slot: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            try:
                report = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self._last[slot] = report
                self._heard[slot] = time.monotonic()
            try:
                self.on_report(report)
            except Exception:  # a report must never end the listener: log it
                log.exception("applying a serving process's report")
            self._push(slot, proc)
        proc.wait()
        with self._lock:
            last = self._last.pop(slot, {})
            for k in self.errors:
                self.errors[k] += last.get(k, 0)
        if self._stopping.is_set():
            return
        log.warning("serving process %d ended (exit %s); starting another", proc.pid,
                    proc.returncode)
        backoff = Backoff(float("inf"), first=0.5, cap=30.0)
        while not self._stopping.is_set():
            try:
                self._spawn(slot)
                return
            except (OSError, RuntimeError) as exc:
                log.warning("serving process: %s", exc)
                backoff.wait()

    def _watch(self) -> None:
        """Kill a process that stopped reporting (its loop stuck, or stopped): the kernel
        would keep handing it connections that wait out the clients' timeout. Its
        listener then sees it end and starts another."""
        while not self._stopping.wait(1.0):
            now = time.monotonic()
            for slot, proc in enumerate(self.procs):
                if proc is None or proc.poll() is not None:
                    continue
                with self._lock:
                    silent = now - self._heard.get(slot, now)
                if silent > self.hung_after:
                    log.warning("serving process %d silent for %.0fs; killing it", proc.pid,
                                silent)
                    self.killed_hung += 1
                    with self._lock:
                        self._heard[slot] = now
                    proc.kill()

    def stop(self, grace: float = 5.0) -> None:
        self._stopping.set()
        for proc in self.procs:
            if proc is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
        deadline = time.monotonic() + grace
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for sock in self.socks:
            sock.close()


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    """The process's first line, or "" when it says nothing within `timeout`."""
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return got[0] if got else ""
