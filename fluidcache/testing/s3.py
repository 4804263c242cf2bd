"""A real HTTP S3 endpoint on loopback (moto's server), for tests, the demo and benches.

Only binds 127.0.0.1. Needs the `moto[server]` extra (in `.[test]` and `.[demo]`).
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

    def options(self) -> dict:
        """fsspec/s3fs options for this endpoint (what `--option` passes to a dataset)."""
        return {"endpoint_url": self.endpoint, **CREDENTIALS}

    def filesystem(self):
        import s3fs
        return s3fs.S3FileSystem(key=CREDENTIALS["key"], secret=CREDENTIALS["secret"],
                                 client_kwargs={"endpoint_url": self.endpoint},
                                 skip_instance_cache=True)


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
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "MotoServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
