"""`fluidcache demo`: the newcomer's one command.

Starts a local S3 endpoint (moto) with a generated image-like dataset and a local
fluidcache cluster (in a temporary home, so it never touches a cluster you run), reads
the dataset through a real torch DataLoader (2 workers) directly from S3, then through
fluid:// cold and warm, checks every byte, prints files/s and the speed-up, and cleans up.
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
import time


def _samples(n: int, seed: int = 0) -> dict[str, bytes]:
    rng = random.Random(seed)
    out = {}
    for i in range(n):
        size = rng.randint(80_000, 140_000)
        body = b"\xff\xd8\xff\xe0" + rng.randbytes(size - 6) + b"\xff\xd9"
        out[f"train/class{i % 10:02d}/img{i:05d}.jpg"] = body
    return out


def _digest(b: bytes) -> str:
    return hashlib.blake2b(b, digest_size=16).hexdigest()


def _epoch(dataset, workers: int = 2) -> tuple[float, list[str]]:
    from torch.utils.data import DataLoader
    loader = DataLoader(dataset, batch_size=16, num_workers=workers,
                        collate_fn=lambda batch: [_digest(b) for b in batch])
    t0 = time.perf_counter()
    digests = [d for batch in loader for d in batch]
    return time.perf_counter() - t0, digests


def run(files: int = 300, keep: bool = False) -> int:
    try:
        import torch  # noqa: F401
        from .testing.s3 import MotoServer
        MotoServer  # noqa: B018
    except ImportError as exc:
        print(f"the demo needs the demo extra: pip install -e '.[demo]' ({exc})")
        return 1
    from . import cluster, config, connect
    from .integrations.torch import FluidDataset
    from .testing.s3 import MotoServer

    home = tempfile.mkdtemp(prefix="fluidcache-demo-")
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else home
    mem = os.path.join(shm, f"fc-demo-{os.getpid()}")      # the memory tier, removed at the end
    os.environ["FLUIDCACHE_HOME"] = home
    moto = MotoServer(log_path=os.path.join(home, "moto.log"))
    print(f"1/4 starting a local S3 endpoint and writing {files} image-like objects ...")
    moto.start()
    try:
        s3 = moto.filesystem()
        s3.mkdir("demo-images")
        data = _samples(files)
        s3.pipe({f"demo-images/{k}": v for k, v in data.items()})
        expected = [_digest(data[k]) for k in sorted(data)]

        print("2/4 starting a local fluidcache cluster ...")
        cfg = config.load(tiers=[{"medium": "MEM", "path": mem, "quota": "512MiB"},
                                 {"medium": "SSD", "path": os.path.join(home, "ssd"),
                                  "quota": "1GiB"}])
        cluster.start(cfg, dashboard=False)
        try:
            client = connect()
            client.create_dataset("images", {"/": "s3://demo-images"}, moto.options())

            print("3/4 reading with a torch DataLoader (2 workers) ...")
            direct = FluidDataset([f"demo-images/{k}" for k in sorted(data)],
                                  filesystem=s3)
            t_s3, d_s3 = _epoch(direct)
            fluid = FluidDataset([f"fluid://images/{k}" for k in sorted(data)],
                                 filesystem=client.filesystem())
            t_cold, d_cold = _epoch(fluid)
            t_warm, d_warm = _epoch(fluid)
            ok = d_s3 == expected and d_cold == expected and d_warm == expected
            st = client.status()
            ufs = sum(w["stats"].get("ufs_bytes_read", 0) for w in st["workers"])

            print("4/4 results\n")
            rows = [("direct s3fs", t_s3), ("fluidcache cold", t_cold),
                    ("fluidcache warm", t_warm)]
            print(f"  {'reader':<18}{'seconds':>10}{'files/s':>12}{'vs s3fs':>10}")
            for name, t in rows:
                print(f"  {name:<18}{t:>10.2f}{files / t:>12.0f}{t_s3 / t:>9.1f}x")
            print(f"\n  bytes identical in every pass: {'yes' if ok else 'NO'}")
            print(f"  under-store bytes read by the cache: {ufs:,} "
                  f"(the dataset is {sum(map(len, data.values())):,})")
            if keep:
                print(f"\n  the cluster keeps running: FLUIDCACHE_HOME={home} fluidcache status")
            return 0 if ok else 1
        finally:
            if not keep:
                cluster.stop()
    finally:
        if not keep:
            moto.stop()
            shutil.rmtree(home, ignore_errors=True)
            shutil.rmtree(mem, ignore_errors=True)
