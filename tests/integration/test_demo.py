"""`fluidcache demo`, the newcomer's command, runs end to end and cleans up after itself."""
from __future__ import annotations

import glob
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_demo_runs_and_leaves_nothing_behind():
    p = subprocess.run([sys.executable, "-m", "fluidcache.cli", "demo", "--files", "40"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "bytes identical in every pass: yes" in p.stdout
    for reader in ("direct s3fs", "fluidcache cold", "fluidcache warm"):
        assert reader in p.stdout
    assert not glob.glob("/dev/shm/fc-demo-*")
