"""The headline benchmark's workloads, each run the same way for every system.

1. Image classification: a map-style dataset of objects, a DataLoader (num_workers=2)
   feeding a tiny CPU model with a fixed decode-like step per sample; per-epoch time.
2. Parquet: several files, a few columns, scanned with pyarrow; cold then warm.
3. One large object read sequentially in 8 MiB reads; cold then warm.
Every sample, table and stream is checked against what was written.
Also `stage`: the small objects and one large object the read benchmarks share, put in
bucket `bench` and in a tmpfs directory alike.
"""
from __future__ import annotations

import os
import time
import zlib

import numpy as np
import xxhash

IMG_SIDE = 64


def digest(data) -> int:
    """A sample's checksum, as a non-negative int64 (what a DataLoader batch can hold)."""
    return xxhash.xxh3_64_intdigest(data) >> 1


class Samples:
    """Map-style dataset: (index, xxh3 of the bytes, a 3x64x64 float tensor)."""

    def __init__(self, reader, names: list[str]) -> None:
        self.reader, self.names = reader, names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        import torch
        data = self.reader(self.names[i])
        zlib.compress(data[:32768], 1)            # the decode-like step: fixed CPU work
        pixels = np.frombuffer(data[:3 * IMG_SIDE * IMG_SIDE], dtype=np.uint8)
        x = torch.from_numpy(pixels.astype(np.float32) / 255.0).reshape(3, IMG_SIDE, IMG_SIDE)
        return i, digest(data), x


def image_epochs(system, names: list[str], expected: list[int], epochs: int,
                 batch: int = 32, seed: int = 0) -> dict:
    """Epoch times (s) and samples/s of a DataLoader(num_workers=2) training loop."""
    import torch
    from torch.utils.data import DataLoader

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    ds = Samples(system.reader("img/"), names)
    times, wrong = [], 0
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(seed + epoch)
        loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=2, generator=g)
        seen = 0
        t0 = time.perf_counter()
        for idx, digest, x in loader:
            wrong += sum(int(d) != expected[int(i)] for i, d in zip(idx, digest))
            seen += len(idx)
            opt.zero_grad()
            loss_fn(model(x), idx % 10).backward()
            opt.step()
        times.append(time.perf_counter() - t0)
        if seen != len(names):
            raise AssertionError(f"{system.name}: epoch {epoch} saw {seen} samples")
    if wrong:
        raise AssertionError(f"{system.name}: {wrong} samples with wrong bytes")
    return {"epoch_s": times, "samples_per_s": [len(names) / t for t in times]}


def parquet_scan(system, paths: list[str], columns: list[str], expect: dict) -> dict:
    """Cold then warm scan of `columns` of every file; row count and sums checked."""
    import pyarrow.parquet as pq
    out = {}
    system.cold()
    for phase in ("cold", "warm"):
        fs = system.filesystem()
        t0 = time.perf_counter()
        table = pq.read_table([system.path(p) for p in paths], columns=columns,
                              filesystem=fs if system.name != "tmpfs (ceiling)" else None)
        out[phase] = time.perf_counter() - t0
        got = {"rows": table.num_rows, **{c: float(table.column(c).to_numpy().sum())
                                           for c in columns}}
        if got != expect:
            raise AssertionError(f"{system.name}: parquet scan gave {got}, not {expect}")
    return out


def stream(system, key: str, size: int, digest: str, chunk: int = 8 << 20) -> dict:
    """Cold then warm sequential read of one object in `chunk` reads (GB/s)."""
    out = {}
    system.cold()
    for phase in ("cold", "warm"):
        fs = system.filesystem()
        h = xxhash.xxh3_128()                 # fast enough not to be what is measured
        t0 = time.perf_counter()
        n = 0
        with fs.open(system.path(key), "rb") as f:
            while block := f.read(chunk):
                n += len(block)
                h.update(block)
        dt = time.perf_counter() - t0
        if n != size or h.hexdigest() != digest:
            raise AssertionError(f"{system.name}: the {key} stream was wrong")
        out[phase] = {"s": dt, "gb_per_s": size / dt / 1e9}
    return out


def tensor_like(n: int) -> memoryview:
    """A writable buffer of `n` bytes placed as torch places a large tensor's data (64
    bytes into a page): the readinto target of every reader in a run. Not a bytearray
    (nor a numpy array): their data starts 16 bytes into a page, and this machine's
    kernel copies from the page cache into such a buffer run ~3x slower (measured: 1.2
    against 4.0 GB/s for a 256 MiB readinto from tmpfs, AMD EPYC VM), for every reader
    alike, which would make the tmpfs ceiling a floor."""
    import mmap
    return memoryview(mmap.mmap(-1, n + 64))[64:64 + n]


def stage(s3, tmpfs: str, files: dict[str, bytes], big: bytes) -> None:
    """`files` and `big.bin` into bucket `bench` (s3fs) and under `tmpfs`, the same."""
    s3.mkdir("bench")
    print(f"writing {len(files)} objects and one {len(big) >> 20} MiB object ...",
          flush=True)
    s3.pipe({f"bench/{k}": v for k, v in files.items()})
    s3.pipe_file("bench/big.bin", big)
    for k, v in {**files, "big.bin": big}.items():
        os.makedirs(os.path.join(tmpfs, os.path.dirname(k)), exist_ok=True)
        with open(os.path.join(tmpfs, k), "wb") as f:
            f.write(v)
