"""The cache scaler of the fluidcache chart (autoscaling.enabled, mode: kuberay).

A RayCluster has no /scale subresource, so neither a HorizontalPodAutoscaler nor a KEDA
ScaledObject can scale its worker group. This runs from a CronJob and does what an HPA
would on the cache-used ratio (the master's gauge fluidcache_cluster_cache_used_ratio,
which Ray's Prometheus endpoint exports as ray_fluidcache_cluster_cache_used_ratio):

    wanted = ceil(replicas * ratio / target), within [minReplicas, maxReplicas]

no change while ratio / target is within 1 +- tolerance (the HPA's 10% by default), at
most one worker removed per run (each removal drains a node's blocks onto the others),
and nothing at all while the group's pods do not match its replicas (pods starting, or
draining in their preStop hook). It patches the worker group's `replicas`; KubeRay adds
pods, or deletes surplus ones, each drained by its preStop hook before it stops.

Owns: one decision per run. Never: picks which pod goes (KubeRay does), talks to the
fluidcache master, or keeps state between runs (the schedule is its cooldown).
Only the standard library: it runs in the fluidcache image. Settings come from the
environment, which the CronJob fills from the chart's values. Exit 0 when it decided
(changed or not), 1 when it could not (no metric, an API error): the Job then fails.
"""
from __future__ import annotations

import json
import math
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
HTTP_TIMEOUT = 20.0                      # seconds, each request


@dataclass(frozen=True, slots=True)
class Rule:
    target: float                        # the cache-used ratio to hold, 0 < target <= 1
    tolerance: float                     # no change within 1 +- tolerance of it
    lo: int                              # minReplicas
    hi: int                              # maxReplicas


def decide(replicas: int, ratio: float, rule: Rule) -> tuple[int, str]:
    """The worker group's next size, and why."""
    bounded = max(rule.lo, min(rule.hi, replicas))
    if bounded != replicas:
        return bounded, f"{replicas} workers is outside [{rule.lo}, {rule.hi}]"
    used = f"cache used {ratio:.3f} (target {rule.target:.3f})"
    if abs(ratio / rule.target - 1.0) <= rule.tolerance:
        return replicas, f"{used}: within the tolerance"
    wanted = math.ceil(replicas * ratio / rule.target - 1e-9)
    wanted = max(rule.lo, min(rule.hi, wanted))
    if wanted < replicas:
        wanted = replicas - 1            # one drain at a time
    if wanted == replicas:
        return replicas, f"{used}: already at the {'maximum' if ratio > rule.target else 'minimum'}"
    return wanted, f"{used}: {replicas} -> {wanted} workers"


def settled(cluster: dict, replicas: int) -> str | None:
    """None when the cluster's worker pods match `replicas` (this chart's RayCluster has
    one worker group), else what is still under way."""
    status = cluster.get("status") or {}
    ready = status.get("readyWorkerReplicas", 0)
    running = status.get("availableWorkerReplicas", 0)
    if ready == replicas and running == replicas:
        return None
    return f"{ready} ready and {running} running workers for {replicas} wanted"


class Scaler:
    """The I/O around `decide`: Prometheus for the ratio, the Kubernetes API for the
    RayCluster."""

    def __init__(self, env: dict) -> None:
        self.prometheus = env["PROMETHEUS_URL"].rstrip("/")
        self.query = env["PROMETHEUS_QUERY"]
        self.name = env["RAYCLUSTER"]
        self.namespace = env["RAYCLUSTER_NAMESPACE"]
        self.group = env.get("WORKER_GROUP", "cache")
        self.rule = Rule(float(env["TARGET_RATIO"]), float(env.get("TOLERANCE", "0.1")),
                         int(env["MIN_REPLICAS"]), int(env["MAX_REPLICAS"]))
        sa = env.get("SERVICE_ACCOUNT_DIR", SERVICE_ACCOUNT)
        self.api = env.get("KUBE_API") or "https://{}:{}".format(
            env["KUBERNETES_SERVICE_HOST"], env.get("KUBERNETES_SERVICE_PORT", "443"))
        with open(os.path.join(sa, "token")) as f:
            self.token = f.read().strip()
        ca = os.path.join(sa, "ca.crt")
        self.tls = ssl.create_default_context(cafile=ca) if os.path.exists(ca) else None

    def _call(self, url: str, method: str = "GET", body=None, headers=None) -> dict:
        req = urllib.request.Request(url, method=method, headers=headers or {},
                                     data=None if body is None else json.dumps(body).encode())
        ctx = self.tls if url.startswith("https:") else None
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT, context=ctx) as r:
            return json.load(r)

    def ratio(self) -> float:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": self.query})
        data = self._call(url).get("data") or {}
        result = data.get("result")
        if data.get("resultType") == "scalar":
            result = [{"value": result}]
        if not result:
            raise LookupError(f"Prometheus has no value for {self.query}: is it scraping the "
                              "head pod's metrics port, with these labels?")
        value = float(result[0]["value"][1])
        if not math.isfinite(value):
            raise LookupError(f"{self.query} is {value} (no cache capacity yet?)")
        return value

    def _cluster_url(self) -> str:
        return f"{self.api}/apis/ray.io/v1/namespaces/{self.namespace}/rayclusters/{self.name}"

    def cluster(self) -> dict:
        return self._call(self._cluster_url(),
                          headers={"Authorization": f"Bearer {self.token}"})

    def set_replicas(self, index: int, old: int, new: int) -> None:
        path = f"/spec/workerGroupSpecs/{index}"
        patch = [{"op": "test", "path": f"{path}/groupName", "value": self.group},
                 {"op": "test", "path": f"{path}/replicas", "value": old},
                 {"op": "replace", "path": f"{path}/replicas", "value": new}]
        self._call(self._cluster_url(), "PATCH", patch,
                   {"Authorization": f"Bearer {self.token}",
                    "Content-Type": "application/json-patch+json"})

    def run(self) -> str:
        cluster = self.cluster()
        groups = cluster["spec"]["workerGroupSpecs"]
        index = next((i for i, g in enumerate(groups) if g.get("groupName") == self.group), None)
        if index is None:
            raise LookupError(f"RayCluster {self.name} has no worker group {self.group!r}")
        replicas = int(groups[index].get("replicas", self.rule.lo))
        busy = settled(cluster, replicas)
        if busy:
            return f"waiting: {busy}"
        new, why = decide(replicas, self.ratio(), self.rule)
        if new != replicas:
            self.set_replicas(index, replicas, new)
        return why


def main() -> int:
    try:
        print(f"fluidcache-scaler: {Scaler(os.environ).run()}", flush=True)
    except (OSError, LookupError, KeyError, ValueError) as exc:
        detail = ""
        if isinstance(exc, urllib.error.HTTPError):
            detail = ": " + exc.read().decode(errors="replace")[:500]
        print(f"fluidcache-scaler: {exc}{detail}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
