"""fluidcache benchmarks. Each module runs on its own: `python -m bench.policies`."""
