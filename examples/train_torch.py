"""A PyTorch training loop over fluid:// (tiny CPU model): epoch 1 reads through the
cache from the object store, the next epochs read cached blocks.

    python examples/train_torch.py fluid://mixed/images --epochs 2 --start-method spawn
"""
from __future__ import annotations

import argparse
import hashlib
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from fluidcache.integrations.torch import FluidDataset


def decode(data: bytes):
    """Stand-in for an image decoder: a fixed-size tensor from the file's bytes, plus its
    digest so every sample can be checked."""
    px = np.frombuffer(data[:3 * 32 * 32].ljust(3 * 32 * 32, b"\0"), dtype=np.uint8)
    x = torch.from_numpy(px.astype(np.float32) / 255.0).reshape(3, 32, 32)
    return x, hashlib.sha256(data).hexdigest()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--start-method", default=None, choices=["fork", "spawn", "forkserver"])
    a = p.parse_args(argv)
    ds = FluidDataset(a.url, transform=decode)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for epoch in range(a.epochs):
        loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=a.workers,
                            multiprocessing_context=a.start_method)
        t0, seen, digests = time.perf_counter(), 0, {}
        for x, d in loader:
            loss = model(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(x)
            for h in d:
                digests[h] = digests.get(h, 0) + 1
        print(f"epoch {epoch + 1}: {seen} samples in {time.perf_counter() - t0:.2f}s, "
              f"{len(digests)} distinct, loss {loss.item():.4f}")
        print("digests", ",".join(sorted(digests)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
