"""The headline benchmark's quick mode as a smoke test: every system's bytes are checked
inside it (a wrong sample, table or stream fails the run); speed is not judged here."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_bench_quick_runs_and_reports_every_system(tmp_path):
    env = dict(os.environ, FLUIDCACHE_HOME=str(tmp_path / "home"))
    p = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
                       env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads((tmp_path / "results.json").read_text())
    systems = {"tmpfs (ceiling)", "s3fs", "simplecache::s3", "filecache::s3", "fluidcache"}
    for workload in ("images", "parquet", "stream"):
        assert systems <= set(r[workload]), workload
    assert all(len(r["images"][s]["epoch_s"]) == 3 for s in systems)
    cap = r["capacity"]
    assert {"fluidcache partitioned", "fluidcache local-first",
            "simplecache per node"} <= set(cap)
    md = (tmp_path / "RESULTS.md").read_text()
    assert "## 1. Image classification" in md and "## 4. Capacity" in md
    assert (tmp_path / "images_epochs.png").stat().st_size > 1000
    assert (tmp_path / "capacity_hit_ratio.png").stat().st_size > 1000
