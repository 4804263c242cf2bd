"""The shipped Grafana dashboard parses and asks only for metrics fluidcache exports."""
from __future__ import annotations

import json
import re
from importlib import resources


def test_dashboard_queries_only_our_metrics():
    dash = json.loads(resources.files("fluidcache").joinpath("dashboards/grafana.json")
                      .read_text())
    source = resources.files("fluidcache").joinpath("metrics.py").read_text()
    ours = set(re.findall(r'"(fluidcache_[a-z_]+)"', source))
    assert len(ours) >= 12
    asked = set()
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            for name in re.findall(r"ray_(fluidcache_[a-z_]+)", t["expr"]):
                asked.add(re.sub(r"_(total|bucket|sum|count)$", "", name))
    assert asked and asked <= ours, asked - ours
