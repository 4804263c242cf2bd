"""`fluidcache stop` signals only the supervisor `start` made: after a crash or a reboot
the recorded pid may belong to anyone, and that process must live on."""
from __future__ import annotations

import os
import subprocess
import sys

from fluidcache.client import discovery

from ..helpers import cli_env


def test_stop_never_signals_a_process_that_is_not_our_supervisor(tmp_path):
    home = tmp_path / "home"
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                 start_new_session=True)
    try:
        discovery.write({"master": "127.0.0.1:9", "supervisor": bystander.pid,
                         "supervisor_started": 1, "namespace": "default", "token": "x"},
                        home / "cluster.json")
        p = cli_env(dict(os.environ, FLUIDCACHE_HOME=str(home)), "stop")
        assert p.returncode == 0
        assert bystander.poll() is None                  # alive: not ours, never signalled
        assert not (home / "cluster.json").exists()      # the stale record is gone
    finally:
        bystander.kill()
        bystander.wait()
