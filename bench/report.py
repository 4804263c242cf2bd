"""The headline benchmark's report: the machine, Markdown tables with the ratios that
matter, and PNG plots (matplotlib, headless)."""
from __future__ import annotations

import os
import platform


def machine() -> dict:
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    versions = {}
    for mod in ("ray", "torch", "fsspec", "s3fs", "pyarrow", "moto"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing module is just not listed
            pass
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "memory_bytes": mem,
            "python": platform.python_version(), **versions}


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(head, rows) -> list[str]:
    return [_row(head), _row(["---"] * len(head)), *(_row(r) for r in rows)]


def _warm(times: list[float]) -> float:
    w = times[1:] or times
    return sum(w) / len(w)


def markdown(r: dict) -> str:
    m = r["machine"]
    out = ["# fluidcache headline benchmark", "",
           f"Run {r['started']} with `{r['command']}` on {m['platform']}, {m['cpus']} CPUs, "
           f"{m['memory_bytes'] / 2**30:.0f} GiB; Python {m['python']}, "
           + ", ".join(f"{k} {v}" for k, v in m.items()
                       if k not in ("platform", "cpus", "memory_bytes", "python")) + ".",
           f"Object store: moto S3 behind a proxy adding {r['delay_ms']:.0f} ms first-byte "
           "latency per request, the same for every system.", ""]
    for name, why in r.get("skipped", {}).items():
        out.append(f"Not measured: {name} ({why}).")
    img = r.get("images")
    if img:
        s3 = img["s3fs"]["epoch_s"]
        ceil = img["tmpfs (ceiling)"]["epoch_s"]
        out += ["", f"## 1. Image classification: {img['objects']} objects of 80-140 KB, "
                "DataLoader(num_workers=2), tiny CPU model", ""]
        rows = []
        for sysname, v in img.items():
            if not isinstance(v, dict):
                continue
            e = v["epoch_s"]
            rows.append([sysname, *(f"{t:.1f}" for t in e), f"{v['samples_per_s'][-1]:.0f}",
                         f"{_warm(e) / _warm(s3):.2f}x", f"{_warm(e) / _warm(ceil):.2f}x"])
        out += _table(["system", *(f"epoch {i + 1} (s)" for i in range(img["epochs"])),
                       "last epoch samples/s", "warm time vs s3fs", "warm time vs tmpfs"],
                      rows)
        fl = img["fluidcache"]["epoch_s"]
        out += ["", f"- fluidcache warm epoch: {100 * (1 - _warm(fl) / _warm(s3)):.0f}% less "
                f"time than direct s3fs (target >= 69%); "
                f"{100 * (_warm(fl) / _warm(ceil) - 1):+.0f}% "
                "against the tmpfs ceiling (target within 10%).",
                f"- fluidcache cold epoch: {fl[0] / s3[0]:.2f}x the direct s3fs epoch "
                "(target <= 1.0x).",
                f"- fluidcache warm against simplecache warm: "
                f"{_warm(img['simplecache::s3']['epoch_s']) / _warm(fl):.2f}x faster."]
    pqr = r.get("parquet")
    if pqr:
        out += ["", f"## 2. Parquet: {pqr['files']} files, {pqr['rows']:,} rows, 2 of 6 "
                "columns, pyarrow", ""]
        out += _table(["system", "cold (s)", "warm (s)"],
                      [[k, f"{v['cold']:.2f}", f"{v['warm']:.2f}"] for k, v in pqr.items()
                       if isinstance(v, dict)])
    st = r.get("stream")
    if st:
        out += ["", f"## 3. One {st['mib']} MiB object read sequentially (8 MiB reads)", ""]
        out += _table(["system", "cold GB/s", "warm GB/s"],
                      [[k, f"{v['cold']['gb_per_s']:.2f}", f"{v['warm']['gb_per_s']:.2f}"]
                       for k, v in st.items() if isinstance(v, dict)])
        out += ["", "Cold, the object store is the limit, and moto more than a real one: moto "
                "serves a range GET in time proportional to the whole object (measured here: "
                "4 MiB from an 8 MiB object 18 ms, from a 256 MiB object 183 ms), so "
                "fluidcache's 4 MiB block fetches of a 1 GiB object cost moto ~0.7 s each; "
                "s3fs asks for fewer, larger ranges (bench.stream measures cold streams "
                "against s3rver, whose range GETs cost the range, and a store model of "
                "20 ms + 64 MB/s per connection). Warm, fluidcache reads its memory tier in "
                "/dev/shm and checks every block's checksum on every read, while simplecache "
                "and filecache read files on disk, whose page cache gives 8 MiB reads ~1.6x "
                "faster than /dev/shm on this machine; bench.read_path compares them on the "
                "same tmpfs."]
    cap = r.get("capacity")
    if cap:
        out += ["", f"## 4. Capacity: {cap['nodes']} Ray nodes, cache per node "
                f"{cap['quota_per_node'] / 2**20:.0f} MiB = 40% of the "
                f"{cap['dataset_bytes'] / 2**20:.0f} MiB dataset, reshuffled shards per epoch",
                ""]
        rows = []
        for k, v in cap.items():
            if isinstance(v, list):
                rows.append([k, *(f"{e['hit_ratio']:.2f} / {e['s']:.1f}s" for e in v)])
        n = max((len(v) for v in cap.values() if isinstance(v, list)), default=0)
        out += _table(["system", *(f"epoch {i + 1} hit ratio / time" for i in range(n))], rows)
        out += ["", "simplecache has no size limit: it keeps whatever its node read before "
                "(here up to what one node reads in earlier epochs)."]
    return "\n".join(out) + "\n"


def plots(r: dict, out_dir: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    made = []
    img = r.get("images")
    if img:
        names = [k for k, v in img.items() if isinstance(v, dict)]
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.8 / img["epochs"]
        for e in range(img["epochs"]):
            ax.bar([i + e * width for i in range(len(names))],
                   [img[n]["epoch_s"][e] for n in names], width, label=f"epoch {e + 1}")
        ax.set_xticks([i + width * (img["epochs"] - 1) / 2 for i in range(len(names))])
        ax.set_xticklabels(names, rotation=15)
        ax.set_ylabel("epoch time (s)")
        ax.set_title(f"{img['objects']} images, DataLoader(num_workers=2), "
                     f"{r['delay_ms']:.0f} ms store latency")
        ax.legend()
        fig.tight_layout()
        path = os.path.join(out_dir, "images_epochs.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(path)
    cap = r.get("capacity")
    if cap:
        fig, ax = plt.subplots(figsize=(6, 4))
        for k, v in cap.items():
            if isinstance(v, list):
                ax.plot([e["epoch"] for e in v], [e["hit_ratio"] for e in v], marker="o", label=k)
        ax.set_xlabel("epoch")
        ax.set_ylabel("hit ratio")
        ax.set_ylim(0, 1.05)
        ax.set_title("3 nodes, 40% of the dataset cached per node")
        ax.legend()
        fig.tight_layout()
        path = os.path.join(out_dir, "capacity_hit_ratio.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(path)
    return made


# -- sections other benchmarks keep in RESULTS.md (the headline run keeps them) ----------
def _marks(name: str) -> tuple[str, str]:
    return f"<!-- section {name} -->", f"<!-- /section {name} -->"


def _sections(text: str) -> dict[str, str]:
    import re
    return {m.group(1): m.group(0) for m in re.finditer(
        r"<!-- section (\S+) -->.*?<!-- /section \1 -->", text, re.S)}


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def put_section(path: str, name: str, body: str) -> None:
    """Write `body` as section `name` of the Markdown file at `path`: in place of the
    section's last version, else at the end."""
    text = _read(path)
    start, end = _marks(name)
    block = f"{start}\n{body.rstrip()}\n{end}"
    old = _sections(text).get(name)
    text = text.replace(old, block) if old else text.rstrip() + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


def write_keeping_sections(path: str, md: str) -> None:
    """Write the headline report `md` to `path`, keeping the sections other benchmarks
    wrote there."""
    kept = _sections(_read(path))
    with open(path, "w") as f:
        f.write("\n\n".join([md.rstrip(), *kept.values()]) + "\n")


def remote_plot(r: dict, out_dir: str) -> str:
    """Files/s per reader count: tmpfs, fluid over TCP, cat of 64 (median rounds, log)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    procs = sorted({x["procs"] for x in r["files"]})
    modes = [m for m in ("tmpfs", "tcp", "batch") if any(x["mode"] == m for x in r["files"])]
    from bench.remote import MODES as labels
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(modes)
    for j, m in enumerate(modes):
        got = {x["procs"]: x for x in r["files"] if x["mode"] == m}
        ax.bar([i + j * width for i in range(len(procs))], [got[p]["median"] for p in procs],
               width, label=labels[m],
               yerr=[[got[p]["median"] - got[p]["worst"] for p in procs], [0] * len(procs)])
    ax.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(procs))])
    ax.set_xticklabels([f"{p} reader process{'es' if p > 1 else ''}" for p in procs])
    ax.set_yscale("log")
    ax.set_ylabel("files/s (median round; bar down to the worst)")
    ax.set_title(f"{r['objects']} objects of 80-140 KB, warm, one node, "
                 f"serve_processes={r['serve_processes']}")
    ax.legend()
    fig.tight_layout()
    name = "remote_reads.png" if r["serve_processes"] else "remote_reads_serve0.png"
    fig.savefig(os.path.join(out_dir, name), dpi=100)
    plt.close(fig)
    return name


FLOOR_NOTE = ("\"floor\": the same reader processes asking two bare server processes "
              "(bench/floor.py) for each file: a name in, its size and `sendfile` out, "
              "nothing checked, limited or counted; what a request per file costs in Python "
              "on this machine, where readers and servers share the 2 cores. \"batch\": "
              "`cat` of 64 paths, one `readv` per owner.")


def remote_markdown(r: dict, plot: str) -> str:
    import statistics
    m = r["machine"]
    lines = [f"## Remote reads (`python -m bench.remote`, serve_processes={r['serve_processes']})",
             "",
             f"{m.get('cpus')} cores shared by the readers, the worker and its serving "
             f"processes; one run, {r['rounds']} rounds interleaved. Median = the median "
             "round, worst = the slowest round; ratios are of the medians, to tmpfs read by "
             "as many processes in the same run. Every read's bytes are checked.", ""]
    lines += _table(["readers", "path", "files/s median", "files/s worst", "vs tmpfs",
                     "server CPU s/GB"],
                    [[x["procs"], x["mode"], f"{x['median']:,.0f}", f"{x['worst']:,.0f}",
                      f"{x['ratio']:.2f}x", "" if x["cpu_s_per_gb"] is None
                      else f"{x['cpu_s_per_gb']:.2f}"] for x in r["files"]])
    lines += ["", FLOOR_NOTE]
    st = r["stream"]
    lines += ["", f"One {r['big_mib']} MiB object, `readinto` (GB/s), into one buffer placed "
              "as torch places a tensor's data (64 bytes into a page; a bytearray's 16 bytes "
              "in make this machine's kernel copies ~3x slower for every reader):", ""]
    lines += _table(["", "median", "worst"], [[k, f"{v['median']:.2f}", f"{v['worst']:.2f}"]
                                              for k, v in st.items()])
    lat = r["latency_ms"]
    lines += ["", f"One 128 KB read over TCP, 2,000 in a row: median {lat['median']:.3f} ms, "
              f"p99 {lat['p99']:.3f} ms, worst {lat['worst']:.3f} ms."]
    single = r["single_epoch"]
    lines += ["", f"DataLoader epoch (2 processes, batch 32), one node, short-circuit: "
              f"{statistics.median(single):,.0f} samples/s median, {min(single):,.0f} worst."]
    if r.get("multi_epoch"):
        multi = r["multi_epoch"]
        lines += [f"The same epoch on each of {r['nodes']} Ray nodes at once (each its own "
                  f"machine id; 2/3 of the blocks remote): {statistics.median(multi):,.0f} "
                  f"samples/s together median, {min(multi):,.0f} worst: "
                  f"{statistics.median(multi) / statistics.median(single):.2f}x the single "
                  "node's (the nodes share the same 2 cores)."]
    lines += ["", f"![files/s]({plot})"]
    return "\n".join(lines)
