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
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and "config.json" in d["data"])
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
    assert cfg.rebalance_rate == parse_size(cache["rebalanceRate"])
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
            time.sleep(0.05)      # polling a condition (the pid files), bounded above
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


# -- scaling in and out: the workers' preStop drain, the KubeRay scaler ------------------
MASTER = "t-fluidcache-head.ml.svc:19998"
KUBERAY_SCALER = os.path.join(CHART, "ci", "kuberay-autoscaling-values.yaml")


def _worker_pods(docs) -> list[dict]:
    """The cache workers' pod specs: the DaemonSet's, or the RayCluster's worker group's."""
    return [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "DaemonSet"
            and d["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"] + \
        [g["template"]["spec"] for d in docs if d["kind"] == "RayCluster"
         for g in d["spec"]["workerGroupSpecs"]]


def _hook_bounds(script: str) -> tuple[int, int, int]:
    """(the drain's --timeout, the `timeout` that ends the CLI, its kill delay)."""
    import re
    drain = re.search(r"--timeout (\d+)\s*$", script)
    outer = re.search(r"exec timeout -k (\d+) (\d+) fluidcache drain ", script)
    assert drain and outer, script
    return int(drain.group(1)), int(outer.group(2)), int(outer.group(1))


@pytest.mark.parametrize("values", [None, os.path.join(CHART, "ci", "kuberay-values.yaml"),
                                    KUBERAY_SCALER],
                         ids=["plain", "kuberay", "kuberay-autoscaling"])
def test_workers_drain_in_a_prestop_hook_bounded_below_the_grace_period(values):
    docs = _render(values)
    pods = _worker_pods(docs)
    assert pods
    with open(values or os.path.join(CHART, "values.yaml")) as f:
        given = (yaml.safe_load(f) or {}).get("worker") or {}
    timeout = given.get("drainTimeoutSeconds", 240)
    for spec in pods:
        [c] = spec["containers"]
        cmd = c["lifecycle"]["preStop"]["exec"]["command"]
        assert cmd[:2] == ["sh", "-c"] and len(cmd) == 3
        script = cmd[2]
        assert f"export FLUIDCACHE_MASTER={MASTER};" in script
        assert 'fluidcache drain "${HOSTNAME:-$(cat /proc/sys/kernel/hostname)}" --wait ' \
            f"--timeout {timeout}" in script
        drain, outer, kill = _hook_bounds(script)
        assert drain == timeout and outer > drain
        # the hook ends (killed at the latest) well inside the grace period, leaving the
        # worker time to stop after it
        assert outer + kill + 15 <= spec["terminationGracePeriodSeconds"]
        # the token the CLI presents: the pod's, the `default` namespace's
        env = {e["name"]: e for e in c["env"]}
        assert env["FLUIDCACHE_TOKEN"]["valueFrom"]["secretKeyRef"] == \
            {"name": "t-fluidcache-token", "key": "token"}
        assert "FLUIDCACHE_MASTER" not in env        # the worker's own environment is as it was


@pytest.mark.parametrize("mode", ["plain", "kuberay"])
def test_no_prestop_drain_when_switched_off(mode):
    docs = _render(None, f"mode={mode}", "worker.drainOnStop=false",
                   "worker.terminationGracePeriodSeconds=20")
    pods = _worker_pods(docs)
    assert pods
    for spec in pods:
        assert "lifecycle" not in spec["containers"][0]
        assert spec["terminationGracePeriodSeconds"] == 20


@pytest.mark.parametrize("sets, why", [
    (("worker.terminationGracePeriodSeconds=60",),
     "must be at least worker.drainTimeoutSeconds + 30 (270)"),
    (("worker.drainTimeoutSeconds=0",), "drainTimeoutSeconds must be a positive"),
], ids=["grace-too-short", "no-timeout"])
def test_drain_values_are_checked(sets, why):
    for mode in ("plain", "kuberay"):
        p = _helm("template", "t", CHART, "--set", f"mode={mode}",
                  *[a for s in sets for a in ("--set", s)], check=False)
        assert p.returncode != 0 and why in p.stderr


def _stub(tmp_path, body: str):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    stub = bin_ / "fluidcache"
    stub.write_text("#!/bin/sh\n" + body)
    stub.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}",
            "HOSTNAME": "t-fluidcache-worker-x7k2p", "FLUIDCACHE_TOKEN": "tok"}


@pytest.mark.skipif(shutil.which("timeout") is None, reason="no coreutils timeout")
def test_the_prestop_hook_drains_this_pods_worker(tmp_path):
    """The rendered hook, run with a stand-in `fluidcache`: it drains the pod's host
    name at the head Service, waits, and passes the drain's exit on (an event at most)."""
    [spec] = _worker_pods(_render())
    cmd = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    log = tmp_path / "calls"
    env = _stub(tmp_path, f'echo "$FLUIDCACHE_MASTER $FLUIDCACHE_TOKEN $*" >> {log}\nexit 3\n')
    p = subprocess.run(cmd, env=env, timeout=60)
    assert p.returncode == 3
    assert log.read_text().splitlines() == [
        f"{MASTER} tok drain t-fluidcache-worker-x7k2p --wait --timeout 240"]


@pytest.mark.skipif(shutil.which("timeout") is None, reason="no coreutils timeout")
def test_a_drain_that_hangs_is_ended_by_the_hook(tmp_path):
    """A CLI that never returns (its own --timeout broken, the master unreachable...) is
    ended by `timeout`: the hook never holds the pod past its grace period."""
    import time
    docs = _render(None, "worker.drainTimeoutSeconds=1", "worker.terminationGracePeriodSeconds=31")
    [spec] = _worker_pods(docs)
    cmd = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    drain, outer, kill = _hook_bounds(cmd[2])
    env = _stub(tmp_path, "trap '' TERM\nexec sleep 300\n")     # deaf to SIGTERM, too
    start = time.monotonic()
    p = subprocess.run(cmd, env=env, timeout=outer + kill + 30)
    took = time.monotonic() - start
    assert p.returncode != 0
    assert outer <= took < outer + kill + 5 <= spec["terminationGracePeriodSeconds"]


def _scaler(docs) -> dict[str, list]:
    return {k: [d for d in docs if d["kind"] == k and
                d["metadata"]["labels"].get("app.kubernetes.io/component") == "scaler"]
            for k in ("CronJob", "Role", "RoleBinding", "ServiceAccount", "ConfigMap")}


@pytest.mark.parametrize("values", [None, os.path.join(CHART, "ci", "kuberay-values.yaml")],
                         ids=["plain", "kuberay"])
def test_no_autoscaling_by_default(values):
    docs = _render(values)
    assert not any(_scaler(docs).values())
    assert not [d for d in docs if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
    for d in docs:
        if d["kind"] == "RayCluster":
            [g] = d["spec"]["workerGroupSpecs"]
            assert g["replicas"] == g["minReplicas"] == g["maxReplicas"] == 3


def test_the_kuberay_autoscaling_example_scales_the_worker_group_on_the_cache_used_ratio():
    import kubernetes_validate
    docs = _render(KUBERAY_SCALER)
    for d in docs:
        if not d["apiVersion"].startswith("ray.io/"):     # RayCluster: no schema offline
            kubernetes_validate.validate(d, "1.37.0", strict=True)
    s = _scaler(docs)
    assert all(len(v) == 1 for v in s.values()), s
    [cj], [role], [binding], [sa] = s["CronJob"], s["Role"], s["RoleBinding"], s["ServiceAccount"]
    assert cj["spec"]["schedule"] == "*/5 * * * *"
    assert cj["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"] == "t-fluidcache-scaler"
    [c] = pod["containers"]
    assert c["command"] == ["python3", "/etc/fluidcache-scaler/scaler.py"]
    assert c["securityContext"]["runAsNonRoot"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["PROMETHEUS_URL"] == "http://prometheus-operated.monitoring.svc:9090"
    assert env["PROMETHEUS_QUERY"] == ('max(ray_fluidcache_cluster_cache_used_ratio{'
                                       'namespace="ml", pod=~"t-fluidcache-head-.*"})')
    assert (env["MIN_REPLICAS"], env["MAX_REPLICAS"], env["TARGET_RATIO"]) == ("2", "6", "0.75")
    assert (env["RAYCLUSTER"], env["RAYCLUSTER_NAMESPACE"], env["WORKER_GROUP"]) == \
        ("t-fluidcache", "ml", "cache")
    # it may get and patch this release's RayCluster, nothing else
    assert role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayclusters"],
                              "resourceNames": ["t-fluidcache"], "verbs": ["get", "patch"]}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "t-fluidcache-scaler",
                                    "namespace": "ml"}]
    # the script it runs is the chart's
    with open(os.path.join(CHART, "files", "scaler.py")) as f:
        assert s["ConfigMap"][0]["data"]["scaler.py"].strip() == f.read().strip()
    # the worker group's bounds are the scaler's, its size within them
    [rc] = [d for d in docs if d["kind"] == "RayCluster"]
    [g] = rc["spec"]["workerGroupSpecs"]
    assert (g["minReplicas"], g["maxReplicas"], g["replicas"]) == (2, 6, 2)
    assert "enableInTreeAutoscaling" not in rc["spec"]     # KubeRay deletes surplus pods


def test_a_custom_query_and_the_size_clamped_to_the_bounds():
    docs = _render(KUBERAY_SCALER, "kuberay.workers=9",
                   "autoscaling.prometheus.query=max(ray_fluidcache_cluster_cache_used_ratio)")
    [cj] = _scaler(docs)["CronJob"]
    [c] = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e["value"] for e in c["env"]}["PROMETHEUS_QUERY"] == \
        "max(ray_fluidcache_cluster_cache_used_ratio)"
    [rc] = [d for d in docs if d["kind"] == "RayCluster"]
    assert rc["spec"]["workerGroupSpecs"][0]["replicas"] == 6


@pytest.mark.parametrize("sets, why", [
    (("mode=plain",), "needs mode: kuberay"),
    (("autoscaling.prometheus.serverAddress=",), "needs autoscaling.prometheus.serverAddress"),
    (("autoscaling.minReplicas=0",), "1 <= minReplicas <= maxReplicas"),
    (("autoscaling.maxReplicas=1",), "1 <= minReplicas <= maxReplicas"),
    (("autoscaling.targetCacheUsedRatio=80",), "is a ratio in (0, 1]"),
    (("autoscaling.tolerance=1",), "tolerance is in [0, 1)"),
], ids=["plain-mode", "no-prometheus", "min-0", "max-below-min", "percent", "tolerance"])
def test_autoscaling_values_are_checked(sets, why):
    p = _helm("template", "t", CHART, "-f", KUBERAY_SCALER,
              *[a for s in sets for a in ("--set", s)], check=False)
    assert p.returncode != 0 and why in p.stderr


def _load_scaler(tmp_path):
    """The scaler script as the CronJob gets it (from the rendered ConfigMap)."""
    import importlib.util
    [cm] = _scaler(_render(KUBERAY_SCALER))["ConfigMap"]
    path = tmp_path / "scaler.py"
    path.write_text(cm["data"]["scaler.py"])
    spec = importlib.util.spec_from_file_location("fluidcache_chart_scaler", path)
    mod = importlib.util.module_from_spec(spec)
    import sys
    sys.modules[spec.name] = mod                      # dataclasses look their module up
    try:
        spec.loader.exec_module(mod)
    finally:
        del sys.modules[spec.name]
    return mod, path


@pytest.mark.parametrize("replicas, ratio, wanted", [
    (2, 0.95, 3),          # ceil(2 * 0.95 / 0.75) = 3
    (2, 1.0, 3),
    (3, 1.0, 4),           # ceil(3 * 1.0 / 0.75) = 4
    (4, 1.0, 6),           # ceil(5.33) = 6, the maximum
    (6, 1.0, 6),           # at the maximum
    (3, 0.78, 3),          # within 10% of the target
    (3, 0.70, 3),
    (5, 0.20, 4),          # ceil(1.33) = 2, but one drain at a time
    (3, 0.45, 2),          # ceil(1.8) = 2
    (2, 0.0, 2),           # at the minimum
    (1, 0.5, 2),           # below the bounds: back within them
    (9, 0.75, 6),          # above them
    (4, 0.75 * 5 / 4, 5),  # exactly one more: no float noise above it
])
def test_the_scaler_decides_like_an_hpa(tmp_path, replicas, ratio, wanted):
    mod, _ = _load_scaler(tmp_path)
    rule = mod.Rule(target=0.75, tolerance=0.1, lo=2, hi=6)
    new, why = mod.decide(replicas, ratio, rule)
    assert new == wanted, why


def test_the_scaler_patches_the_raycluster_and_waits_while_pods_change(tmp_path):
    """The script against a stand-in Prometheus and Kubernetes API: it reads the ratio
    with the rendered query, patches the worker group's replicas (guarded by a test of
    the value it read) with its service account's token, and changes nothing while the
    group's pods do not match its replicas."""
    import http.server
    import threading
    import urllib.parse
    _, script = _load_scaler(tmp_path)
    state = {"ratio": "0.95", "replicas": 2, "ready": 2, "running": 2}
    seen = {"queries": [], "patches": [], "auth": set()}

    class API(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, obj, code=200):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            url = urllib.parse.urlparse(self.path)
            if url.path == "/api/v1/query":
                seen["queries"].append(urllib.parse.parse_qs(url.query)["query"][0])
                result = [] if state["ratio"] is None else \
                    [{"metric": {}, "value": [0, state["ratio"]]}]
                return self._send({"status": "success",
                                   "data": {"resultType": "vector", "result": result}})
            assert url.path == "/apis/ray.io/v1/namespaces/ml/rayclusters/t-fluidcache"
            seen["auth"].add(self.headers["Authorization"])
            self._send({"spec": {"workerGroupSpecs": [
                {"groupName": "cache", "replicas": state["replicas"]}]},
                "status": {"readyWorkerReplicas": state["ready"],
                           "availableWorkerReplicas": state["running"]}})

        def do_PATCH(self):
            assert self.headers["Content-Type"] == "application/json-patch+json"
            seen["auth"].add(self.headers["Authorization"])
            patch = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen["patches"].append(patch)
            self._send({})

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), API)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("sa-token\n")
    [cj] = _scaler(_render(KUBERAY_SCALER))["CronJob"]
    [c] = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    url = f"http://127.0.0.1:{server.server_address[1]}"
    env = {**{e["name"]: e["value"] for e in c["env"]}, "PATH": os.environ["PATH"],
           "PROMETHEUS_URL": url, "KUBE_API": url, "SERVICE_ACCOUNT_DIR": str(sa)}

    def run():
        import sys
        return subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                              text=True, timeout=60)
    try:
        p = run()
        assert p.returncode == 0, p.stderr
        assert "2 -> 3 workers" in p.stdout
        assert seen["patches"] == [[
            {"op": "test", "path": "/spec/workerGroupSpecs/0/groupName", "value": "cache"},
            {"op": "test", "path": "/spec/workerGroupSpecs/0/replicas", "value": 2},
            {"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 3}]]
        assert seen["queries"] == [env["PROMETHEUS_QUERY"]]
        assert seen["auth"] == {"Bearer sa-token"}
        # a pod still draining (running, not wanted): no decision
        state.update(replicas=3, ready=3, running=4, ratio="0.2")
        p = run()
        assert p.returncode == 0 and "waiting" in p.stdout and len(seen["patches"]) == 1
        # no usable value: the Job fails, saying what to check, and changes nothing
        state.update(running=3, ratio="NaN")
        p = run()
        assert p.returncode == 1 and "is nan" in p.stderr
        state.update(ratio=None)
        p = run()
        assert p.returncode == 1 and "Prometheus has no value for" in p.stderr
        assert len(seen["patches"]) == 1
    finally:
        server.shutdown()
