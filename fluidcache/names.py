"""Names that scripts and the Ray dashboard rely on (part of the public contract)."""
from __future__ import annotations

RAY_NAMESPACE = "fluidcache"
MASTER_ACTOR = "fluidcache-master"
PROTOCOL = "fluid"


def worker_actor(node_id: str) -> str:
    return f"fluidcache-worker-{node_id}"
