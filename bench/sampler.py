"""Samplers when the dataset is twice the cache: plain, locality and substituting.

    python -m bench.sampler                       # 1,500 objects of 80-140 KB
    python -m bench.sampler --objects 600 --out bench

moto S3 behind the latency proxy (20 ms first byte per request), a local fluidcache
cluster whose memory tier holds half the dataset, once with `fill-once` eviction and
once with `lru`. A training loop: DataLoader(num_workers=2, batch 32) over FluidDataset
(reading over TCP, as from another node: the workers count every read; a decode-like
step per sample, every sample's xxh3 checked) feeding the headline
benchmark's tiny CPU CNN.
Per sampler, on the same cache, two epochs after the cache was filled by one plain
epoch; the second is the warm epoch reported. Samplers: torch's RandomSampler (plain),
CacheAwareDistributedSampler (locality: one rank here, so its order is the permutation)
and SubstitutingSampler (window 512). Against the same loop reading direct s3fs (through
the proxy) and tmpfs (the ceiling). Hit ratio = the workers' hits / (hits + misses) for
the dataset during the epoch: a miss is a read that waited on the store (also one that
found its prefetch still in flight), so it is the effective hit ratio. One run: each
figure is one measurement (no median, no worst case).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import zlib

import xxhash

from fluidcache.testing.proxy import LatencyProxy

from . import workloads
from fluidcache.testing.s3 import MotoServer


class Decode:
    """A sample's xxh3 (>> 1) and a 3x64x64 image tensor, after a fixed decode-like step
    (the headline benchmark's image workload, bench/workloads.py)."""

    def __call__(self, data: bytes):
        import numpy as np
        import torch
        zlib.compress(data[:32768], 1)
        side = workloads.IMG_SIDE
        pixels = np.frombuffer(data[:3 * side * side], dtype=np.uint8)
        x = torch.from_numpy(pixels.astype(np.float32) / 255.0).reshape(3, side, side)
        return xxhash.xxh3_64_intdigest(data) >> 1, x


def cpu_ticks() -> tuple[int, int]:
    """This machine's busy and total CPU time so far (/proc/stat, all cores; 0s where
    there is no /proc)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0, 0
    return sum(v) - v[3] - v[4], sum(v)          # less idle and iowait


def busy_share(before: tuple[int, int]) -> float | None:
    """The share of all cores' time that was busy since `before` (cpu_ticks())."""
    now = cpu_ticks()
    return (now[0] - before[0]) / (now[1] - before[1]) if now[1] > before[1] else None


def _epoch(ds, sampler, expected: dict[str, int], cpu: list | None = None) -> float:
    import torch
    from torch.utils.data import DataLoader
    torch.manual_seed(0)          # the headline benchmark's tiny CNN
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    loader = DataLoader(ds, batch_size=32, sampler=sampler, num_workers=2,
                        collate_fn=lambda b: b)
    seen, ticks, t0 = [], cpu_ticks(), time.perf_counter()
    for batch in loader:
        seen += [d for d, _ in batch]
        x = torch.stack([t for _, t in batch])
        y = torch.tensor([d % 10 for d, _ in batch])
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dt = time.perf_counter() - t0
    if cpu is not None:
        cpu.append(busy_share(ticks))
    if sorted(seen) != sorted(expected[p.rsplit("/", 1)[-1]] for p in ds.paths):
        raise AssertionError("an epoch read wrong bytes or not each sample once")
    return dt


def _counts(client) -> tuple[int, int]:
    d = next(d for d in client.status()["datasets"] if d["name"] == "smp")
    return d["hits"], d["misses"]


def _fetches(client) -> int:
    """Blocks the workers fetched from the store so far."""
    return sum(w["stats"].get("ufs_fetches", 0) for w in client.status()["workers"])


def _settled(client, before: tuple[int, int], n: int) -> tuple[int, int]:
    """The epoch's hits and misses, once all reached the master: at least `n` and the
    same over two heartbeats (hits served by the serving processes come later)."""
    deadline = time.monotonic() + 60
    last, since = None, time.monotonic()
    while True:
        h, m = _counts(client)
        now = time.monotonic()
        if (h, m) != last:
            last, since = (h, m), now
        if ((h + m) - sum(before) >= n and now - since > 4.5) or now > deadline:
            return h - before[0], m - before[1]
        time.sleep(0.2)        # polling the heartbeats' counts (a condition)


def run(n: int, delay: float, replay: bool = False, rounds: int = 2) -> dict:
    import fsspec
    import torch

    from fluidcache import cluster as fc, config, connect
    from fluidcache.integrations.torch import (CacheAwareDistributedSampler, FluidDataset,
                                               SubstitutingSampler)
    rng = random.Random(0)
    objects = {f"o{i:05d}.bin": rng.randbytes(rng.randint(80_000, 140_000)) for i in range(n)}
    expected = {k: xxhash.xxh3_64_intdigest(v) >> 1 for k, v in objects.items()}
    total = sum(map(len, objects.values()))
    out: dict = {"objects": n, "dataset_bytes": total, "cache_bytes": total // 2,
                 "delay_ms": delay * 1000, "store": "replay" if replay else "moto",
                 "rounds": rounds}
    work = tempfile.mkdtemp(prefix="fc-smp-")
    tmpfs = tempfile.mkdtemp(prefix="fc-smp-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                             else None)
    try:
        with MotoServer() as moto, LatencyProxy(moto.endpoint, delay,
                                                        replay=replay) as store:
            s3 = moto.filesystem()
            s3.mkdir("smp")
            s3.pipe({f"smp/{k}": v for k, v in objects.items()})
            os.makedirs(os.path.join(tmpfs, "data"))
            for k, v in objects.items():
                with open(os.path.join(tmpfs, "data", k), "wb") as f:
                    f.write(v)

            def plain(ds, epoch):
                return torch.utils.data.RandomSampler(
                    ds, generator=torch.Generator().manual_seed(epoch))

            local = FluidDataset([os.path.join(tmpfs, "data", k) for k in sorted(objects)],
                                 Decode(), fsspec.filesystem("file"))
            out["tmpfs_cpu"], out["s3fs_cpu"] = [], []
            out["tmpfs"] = [_epoch(local, plain(local, e), expected, out["tmpfs_cpu"])
                            for e in range(1, 2 + rounds)]
            direct = fsspec.filesystem("s3", key=moto.credentials["key"],
                                       secret=moto.credentials["secret"],
                                       client_kwargs={"endpoint_url": store.endpoint},
                                       skip_instance_cache=True)
            remote = FluidDataset([f"smp/{k}" for k in sorted(objects)], Decode(), direct)
            out["s3fs"] = [_epoch(remote, plain(remote, e), expected, out["s3fs_cpu"])
                           for e in range(1, 2 + rounds)]
            for eviction in ("fill-once", "lru"):
                out[eviction] = _fluid(fc, config, connect, store, eviction, total, work,
                                       tmpfs, expected, plain, FluidDataset,
                                       CacheAwareDistributedSampler, SubstitutingSampler,
                                       rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(tmpfs, ignore_errors=True)
    return out


def _fluid(fc, config, connect, store, eviction, total, work, tmpfs, expected, plain,
           FluidDataset, CacheAware, Substituting, rounds: int) -> dict:
    home = os.path.join(work, f"home-{eviction}")
    os.environ["FLUIDCACHE_HOME"] = home
    cfg = config.load(tiers=[{"medium": "MEM", "path": os.path.join(tmpfs, f".t-{eviction}"),
                              "quota": total // 2}], eviction=eviction)
    fc.start(cfg, dashboard=False)
    rows: dict = {}
    try:
        client = connect()
        client.create_dataset("smp", {"/": "s3://smp"}, store.options(), sync="never")
        ds = FluidDataset("fluid://smp", Decode(),      # over TCP: every read counted
                          client.filesystem(skip_instance_cache=True, short_circuit=False))
        _epoch(ds, plain(ds, 0), expected)            # fills the cache (half fits)
        makers = {"plain": lambda e: plain(ds, e),
                  "locality": lambda e: _epoch_set(CacheAware(ds, num_replicas=1, rank=0,
                                                              seed=0), e),
                  "substituting": lambda e: _epoch_set(Substituting(ds, window=512,
                                                                    seed=0), e)}
        for name, make in makers.items():
            row = []
            for e in range(1, 2 + rounds):          # the first: the sampler's own fill
                sampler = make(e)
                before, fetched, cpu = _counts(client), _fetches(client), []
                s = _epoch(ds, sampler, expected, cpu)
                h, m = _settled(client, before, len(ds))
                row.append({"s": s, "hit_ratio": h / max(1, h + m), "cpu_busy": cpu[0],
                            "store_fetches": _fetches(client) - fetched,
                            "sampler_believed_ready": getattr(sampler, "ready_ratio",
                                                     lambda: None)()})
            rows[name] = row
        client.close()
    finally:
        fc.stop()
    return rows


def _epoch_set(sampler, epoch: int):
    sampler.set_epoch(epoch)
    if hasattr(sampler, "refresh") and not hasattr(sampler, "ready_ratio"):
        sampler.refresh()                   # the locality sampler's homes, this epoch
    return sampler


STORES = {"moto": "moto S3 behind a %.0f ms first-byte proxy",
          "replay": "a store model: moto behind a %.0f ms first-byte proxy that answers "
                    "a request it has seen before from memory (`--store replay`: every "
                    "object's first answer is moto's, later ones cost the proxy's CPU only, "
                    "as a real store's servers are not on this machine)"}
SAMPLERS = ("plain", "locality", "substituting")


def summary(rows: list[dict]) -> dict:
    """The warm epochs (all but the first) of one sampler: median and worst epoch time,
    and the median of the rest."""
    warm = rows[1:] or rows
    times = sorted(w["s"] for w in warm)

    def med(key):
        got = sorted(w[key] for w in warm if w.get(key) is not None)
        return got[(len(got) - 1) // 2] if got else None
    return {"median": times[(len(times) - 1) // 2], "worst": times[-1],
            "hit_ratio": med("hit_ratio"), "store_fetches": med("store_fetches"),
            "cpu_busy": med("cpu_busy")}


def _warm(epochs: list[float]) -> tuple[float, float]:
    warm = sorted(epochs[1:] or epochs)
    return warm[(len(warm) - 1) // 2], warm[-1]


def markdown(r: dict, command: str, plot: str | None = None) -> str:
    n = r.get("rounds", 1)
    lines = [f"## Samplers, dataset twice the cache (`{command}`)", "",
             f"{r['objects']} objects of 80-140 KB ({r['dataset_bytes'] / 1e6:.0f} MB), "
             f"cache {r['cache_bytes'] / 1e6:.0f} MB (one memory tier), "
             + (STORES[r.get("store", "moto")] % r["delay_ms"]) +
             "; DataLoader(num_workers=2, batch 32). Per sampler, on the same cache: one "
             f"epoch, then {n} warm epoch{'s' if n > 1 else ''}; median = the median warm "
             "epoch, worst = the slowest; the other columns are medians. Hit ratio = reads "
             "that did not wait on the store (the workers' counts). One run.", "",
             "| eviction | sampler | warm epoch s, median | worst | vs plain (medians) | "
             "hit ratio | store fetches | CPU busy | target |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for ev in ("fill-once", "lru"):
        base = summary(r[ev]["plain"])["median"]
        for name in SAMPLERS:
            w = summary(r[ev][name])
            target = "<= 0.6x plain, hit ratio >= 0.9" if name == "substituting" else ""
            lines.append(f"| {ev} | {name} | {w['median']:.2f} | {w['worst']:.2f} | "
                         f"{w['median'] / base:.2f}x | {w['hit_ratio']:.2f} | "
                         f"{w['store_fetches']} | {_share(w['cpu_busy'])} | {target} |")
    s3, tm = _warm(r["s3fs"]), _warm(r["tmpfs"])
    lines += ["", f"Direct s3fs: {s3[0]:.2f} s median, {s3[1]:.2f} worst (CPU busy "
              f"{_share(_median(r.get('s3fs_cpu')))}); tmpfs (the ceiling): {tm[0]:.2f} s "
              f"median, {tm[1]:.2f} worst (CPU busy {_share(_median(r.get('tmpfs_cpu')))}). "
              "CPU busy = the share of all this machine's cores busy during the epoch "
              "(/proc/stat): every process, the store's included. The substituting "
              "sampler's misses still come from the store (store fetches): it hides their "
              "latency behind cached samples, it does not save them; under fill-once a "
              "prefetched block no tier takes is held by its worker until read "
              "(`stage_bytes`, 256 MiB here, more than the cache itself); under lru it "
              "says which samples the epoch still reads and which are done "
              "(`fs.hint_reuse`). The locality sampler's `refresh()` runs before its timed "
              "epoch; the substituting sampler's inside.", ""]
    if plot:
        lines += [f"![samplers]({plot})", ""]
    return "\n".join(lines)


def _median(xs):
    got = sorted(x for x in (xs or [])[1:] if x is not None)
    return got[(len(got) - 1) // 2] if got else None


def _share(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def plot(r: dict, out_dir: str) -> str:
    """Median warm epoch per sampler and eviction (a line up to the worst), the
    tmpfs and direct s3fs epochs as lines; hit ratios written on the bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8.5, 4))
    width = 0.8 / len(SAMPLERS)
    evs = ("fill-once", "lru")
    for j, name in enumerate(SAMPLERS):
        got = [summary(r[ev][name]) for ev in evs]
        xs = [i + j * width for i in range(len(evs))]
        ax.bar(xs, [g["median"] for g in got], width, label=name,
               yerr=[[0] * len(got), [g["worst"] - g["median"] for g in got]])
        for x, g in zip(xs, got, strict=True):
            ax.text(x, g["median"] / 2, f"hit {g['hit_ratio']:.2f}", ha="center",
                    rotation=90, fontsize=8, color="white")
    ax.axhline(_warm(r["tmpfs"])[0], color="green", ls="--", label="tmpfs (ceiling)")
    ax.axhline(_warm(r["s3fs"])[0], color="red", ls=":", label="direct s3fs")
    ax.set_xticks([i + width * (len(SAMPLERS) - 1) / 2 for i in range(len(evs))])
    ax.set_xticklabels(evs)
    ax.set_ylabel("warm epoch, s (median; bar up to the worst)")
    ax.set_title(f"{r['objects']} objects, cache = half, store: {r.get('store', 'moto')}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    name = "sampler.png" if r.get("store", "moto") == "moto" else f"sampler_{r['store']}.png"
    fig.savefig(os.path.join(out_dir, name), dpi=100)
    plt.close(fig)
    return name


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sampler", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", type=int, default=1500)
    p.add_argument("--delay", type=float, default=0.02, help="store first-byte latency (s)")
    p.add_argument("--store", choices=sorted(STORES), default="moto",
                   help="moto behind the proxy (default), or the replaying store model")
    p.add_argument("--rounds", type=int, default=2, help="warm epochs per sampler")
    p.add_argument("--out", help="write the results (json, plot) here and as a section of "
                                 "OUT/RESULTS.md ('sampler', or 'sampler-replay')")
    a = p.parse_args(argv)
    r = run(a.objects, a.delay, a.store == "replay", max(1, a.rounds))
    command = ("python -m bench.sampler" + (f" --objects {a.objects}" if a.objects != 1500
                                            else "")
               + (f" --store {a.store}" if a.store != "moto" else "")
               + (f" --rounds {a.rounds}" if a.rounds != 2 else "") + (" --out bench"
                                                                        if a.out else ""))
    name = "sampler" if a.store == "moto" else f"sampler-{a.store}"
    if a.out:
        from . import report
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, f"{name}.json"), "w") as f:
            json.dump(r, f, indent=2)
        text = markdown(r, command, plot(r, a.out))
        report.put_section(os.path.join(a.out, "RESULTS.md"), name, text)
    else:
        text = markdown(r, command)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
