"""Model loading on every node: one Ray task per alive node loads the same safetensors
file through fluid:// (its blocks read in parallel; the cold ones fetched from the store
once for the whole cluster, by their owners) and reports what it loaded and how fast.

    python examples/load_model.py fluid://models/llm/model.safetensors
"""
from __future__ import annotations

import argparse
import json
import time

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import fluidcache


@ray.remote(num_cpus=0)
def load_here(url: str) -> dict:
    import hashlib

    import torch

    from fluidcache.integrations.torch import load_safetensors
    t0 = time.perf_counter()
    tensors = load_safetensors(url)
    seconds = time.perf_counter() - t0
    digest = hashlib.sha256()
    for name in sorted(tensors):
        raw = tensors[name].contiguous().view(-1).view(torch.uint8)    # any dtype (bf16)
        digest.update(name.encode() + raw.numpy().tobytes())
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    return {"node": ray.get_runtime_context().get_node_id(), "tensors": len(tensors),
            "bytes": nbytes, "seconds": round(seconds, 3), "sha256": digest.hexdigest()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    a = p.parse_args(argv)
    fluidcache.init_ray(log_to_driver=False)
    try:
        nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        results = ray.get([load_here.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            node, soft=False)).remote(a.url) for node in nodes])
    finally:
        ray.shutdown()
    for r in results:
        print(json.dumps(r))
    return 0 if len({r["sha256"] for r in results}) == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
