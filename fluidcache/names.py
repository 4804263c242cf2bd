"""Names that scripts and the Ray dashboard rely on (part of the public contract)."""
from __future__ import annotations

RAY_NAMESPACE = "fluidcache"
MASTER_ACTOR = "fluidcache-master"
PROTOCOL = "fluid"
# a local file being written is named so beside its final name until it is renamed
# there; listings leave such names out
WRITING_PREFIX, WRITING_SUFFIX = ".fluidcache-", ".part"


def is_being_written(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.startswith(WRITING_PREFIX) and base.endswith(WRITING_SUFFIX)


def worker_actor(node_id: str) -> str:
    return f"fluidcache-worker-{node_id}"
