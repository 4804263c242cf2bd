"""The Helm chart: `helm lint --strict`, `helm template` with the defaults and every
values file under helm/fluidcache/ci/, the rendered manifests validated against the
Kubernetes schemas (kubernetes-validate, offline), and the rendered fluidcache config
read by the project's own loader, matching the values."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess

import pytest
import yaml

from fluidcache.config import load, parse_size

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "helm", "fluidcache")
CI_VALUES = sorted(glob.glob(os.path.join(CHART, "ci", "*.yaml")))
HELM = os.environ.get("FLUIDCACHE_HELM") or shutil.which("helm") or \
    os.path.join(ROOT, ".ci", "bin", "helm")
if not os.access(HELM, os.X_OK):
    pytest.skip("no helm binary (.ci/run fetches helm v3.17.2 from npm into .ci/bin; or set "
                "FLUIDCACHE_HELM)", allow_module_level=True)


def _helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def _render(values: str | None = None, *sets: str) -> list[dict]:
    args = ["template", "t", CHART, "--namespace", "ml"]
    if values:
        args += ["-f", values]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(_helm(*args).stdout) if d]


@pytest.mark.parametrize("values", [None, *CI_VALUES],
                         ids=["defaults", *map(os.path.basename, CI_VALUES)])
def test_lint_strict_template_and_validate(values):
    _helm("lint", "--strict", CHART, *(["-f", values] if values else []))
    import kubernetes_validate
    docs = _render(values)
    kinds = {d["kind"] for d in docs}
    assert {"ConfigMap", "Service", "ServiceAccount"} <= kinds
    assert ({"StatefulSet", "DaemonSet"} <= kinds) or "RayCluster" in kinds
    for d in docs:
        if d["apiVersion"].startswith("ray.io/"):
            continue               # a KubeRay CRD: no schema offline; its pod specs are ours
        kubernetes_validate.validate(d, "1.37.0", strict=True)


def _config(docs) -> tuple[dict, list]:
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    return json.loads(cm["data"]["config.json"]), json.loads(cm["data"]["datasets.json"])


@pytest.mark.parametrize("values", CI_VALUES, ids=map(os.path.basename, CI_VALUES))
def test_the_rendered_config_is_what_the_values_say(values, tmp_path):
    docs = _render(values)
    raw, datasets = _config(docs)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    cfg = load(path, env={})                          # the project's own loader
    with open(os.path.join(CHART, "values.yaml")) as f:
        defaults = yaml.safe_load(f)
    with open(values) as f:
        given = yaml.safe_load(f) or {}
    levels = (given.get("tieredstore") or defaults["tieredstore"])["levels"]
    assert [(t.medium, t.path, t.quota, t.high, t.low) for t in cfg.tiers] == [
        (lv["mediumtype"].upper(), lv["path"] + "/blocks", parse_size(lv["quota"]),
         lv.get("high", 0.95), lv.get("low", 0.7)) for lv in levels]
    # blocks live in a directory the worker makes inside each volume (whose mount point
    # is root's); the volumes are the pod's own, and shared with app pods' group only
    # with short-circuit
    assert cfg.tier_trust_parents is True
    assert cfg.tier_group_access == bool((given.get("shortCircuit") or {}).get("enabled"))
    cache = {**defaults["cache"], **(given.get("cache") or {})}
    assert cfg.block_size == parse_size(cache["blockSize"]) and cfg.eviction == cache["eviction"]
    assert cfg.master_port == defaults["master"]["port"]
    assert cfg.node_selector == {"resource:fluidcache_worker": ""}
    assert datasets == (given.get("datasets") or [])
    # every tier is a volume of the worker pods, mounted where the config says
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "DaemonSet"] or \
        [g["template"]["spec"] for d in docs if d["kind"] == "RayCluster"
         for g in d["spec"]["workerGroupSpecs"]]
    for spec in pods:
        mounts = {m["mountPath"] for c in spec["containers"] for m in c["volumeMounts"]}
        assert {os.path.dirname(t.path) for t in cfg.tiers} <= mounts


def test_mem_tiers_are_memory_backed_with_their_quota_and_secrets_are_kept():
    docs = _render()
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    vols = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    assert vols["tier-0"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert vols["tier-1"]["emptyDir"] == {"sizeLimit": "20Gi"}
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    assert set(secrets) == {"t-fluidcache-ray-auth", "t-fluidcache-token"}
    assert all(s["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
               for s in secrets.values())
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    c = sts["spec"]["template"]["spec"]["containers"][0]
    assert c["command"][:3] == ["fluidcache", "serve", "head"]
    assert c["readinessProbe"]["exec"]["command"] == ["fluidcache", "health"]
    assert c["securityContext"]["runAsNonRoot"] and not c["securityContext"][
        "allowPrivilegeEscalation"]
    env = {e["name"] for e in c["env"]}
    assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "FLUIDCACHE_TOKEN", "FLUIDCACHE_MACHINE_ID"} <= env


def test_short_circuit_needs_hostpath_tiers():
    p = _helm("template", "t", CHART, "--set", "shortCircuit.enabled=true", check=False)
    assert p.returncode != 0 and "hostPath" in p.stderr
