"""Real HTTP S3 endpoints on loopback, for tests, the demo and benches.

`MotoServer`: moto's server (the `moto[server]` extra, in `.[test]` and `.[demo]`).
`S3rverServer`: s3rver, a second S3 implementation (Node) that keeps objects as files
and, like several S3-compatible stores, ignores `If-Match` on GET. `.ci/run` installs it
under `.ci/s3rver` (`npm install s3rver@3.7.1`); FLUIDCACHE_S3RVER names another copy.
Both bind 127.0.0.1 only.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

CREDENTIALS = {"key": "testing", "secret": "testing"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Endpoint:
    """An S3 endpoint on loopback at `self.endpoint`, with the test credentials."""

    endpoint: str
    credentials = CREDENTIALS

    def options(self) -> dict:
        """fsspec/s3fs options for this endpoint (what `--option` passes to a dataset)."""
        return {"endpoint_url": self.endpoint, **self.credentials}

    def filesystem(self):
        import s3fs
        return s3fs.S3FileSystem(key=self.credentials["key"], secret=self.credentials["secret"],
                                 client_kwargs={"endpoint_url": self.endpoint},
                                 skip_instance_cache=True)


def _wait_listening(proc: subprocess.Popen, port: int, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)   # polling until the endpoint listens (a condition)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port}")


def terminate(proc: subprocess.Popen | None) -> None:
    """Stop a child server: politely, then for sure."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def s3rver_script() -> str | None:
    """Where s3rver's entry script is: FLUIDCACHE_S3RVER, else what `.ci/run` installed."""
    here = os.path.dirname(os.path.abspath(__file__))
    for path in (os.environ.get("FLUIDCACHE_S3RVER"),
                 os.path.join(here, "..", "..", ".ci", "s3rver", "node_modules", "s3rver",
                              "bin", "s3rver.js")):
        if path and os.path.isfile(path) and shutil.which("node"):
            return os.path.abspath(path)
    return None


class S3rverServer(Endpoint):
    """`with S3rverServer(data_dir) as s3: s3.endpoint`: s3rver on loopback."""

    credentials = {"key": "S3RVER", "secret": "S3RVER"}

    def __init__(self, data_dir: str, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "S3rverServer":
        script = s3rver_script()
        if script is None:
            raise RuntimeError("s3rver is not installed (see .ci/run)")
        os.makedirs(self.data_dir, exist_ok=True)
        self.proc = subprocess.Popen(
            ["node", script, "-d", self.data_dir, "-a", "127.0.0.1", "-p", str(self.port),
             "--silent", "--allow-mismatched-signatures", "--no-vhost-buckets"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            _wait_listening(self.proc, self.port, "s3rver", 60)
        except RuntimeError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        terminate(self.proc)


class MotoServer(Endpoint):
    """`with MotoServer() as s3: s3.endpoint` -> 'http://127.0.0.1:PORT'."""

    def __init__(self, port: int | None = None, log_path: str | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or os.devnull
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "MotoServer":
        exe = shutil.which("moto_server")
        cmd = [exe] if exe else [sys.executable, "-m", "moto.server"]
        env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd + ["-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self._log, stderr=self._log, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}")
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=1).read()
                return self
            except OSError:
                time.sleep(0.1)   # polling until the endpoint answers (a condition)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.endpoint}")

    def stop(self) -> None:
        terminate(self.proc)
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "MotoServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
