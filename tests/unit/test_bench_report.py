"""The benchmarks' shared RESULTS.md: sections other benchmarks write survive the
headline run's rewrite, and a section's new version replaces its last one."""
from bench import report


def test_sections_are_replaced_in_place_and_kept_by_the_headline_rewrite(tmp_path):
    path = str(tmp_path / "RESULTS.md")
    report.put_section(path, "remote", "## Remote\nfirst")
    report.put_section(path, "remote-serve0", "## Baseline\nb")
    report.put_section(path, "remote", "## Remote\nsecond")
    text = open(path).read()
    assert "first" not in text and text.count("## Remote") == 1
    assert text.index("second") < text.index("## Baseline")      # in place, not appended
    report.write_keeping_sections(path, "# headline\nnew tables")
    text = open(path).read()
    assert text.startswith("# headline\nnew tables")
    assert "second" in text and "## Baseline\nb" in text and text.count("<!-- section") == 2


def test_sampler_rows_report_the_median_and_the_worst_warm_epoch():
    from bench import sampler
    rows = [{"s": 9.0, "hit_ratio": 0.1, "store_fetches": 900, "cpu_busy": 0.5},
            {"s": 4.0, "hit_ratio": 0.9, "store_fetches": 700, "cpu_busy": 0.8},
            {"s": 6.0, "hit_ratio": 1.0, "store_fetches": 800, "cpu_busy": 0.9},
            {"s": 5.0, "hit_ratio": 0.95, "store_fetches": 750, "cpu_busy": None}]
    got = sampler.summary(rows)                 # the first epoch is not a warm one
    assert (got["median"], got["worst"]) == (5.0, 6.0)
    assert (got["hit_ratio"], got["store_fetches"], got["cpu_busy"]) == (0.95, 750, 0.8)
    r = {"objects": 10, "dataset_bytes": 10**6, "cache_bytes": 5 * 10**5, "delay_ms": 20,
         "store": "replay", "rounds": 3, "tmpfs": [2.0, 1.0, 1.5, 1.2],
         "s3fs": [9.0, 8.0, 7.0, 8.5], "tmpfs_cpu": [0.9] * 4, "s3fs_cpu": [0.5] * 4}
    for ev in ("fill-once", "lru"):
        r[ev] = {name: rows for name in sampler.SAMPLERS}
    md = sampler.markdown(r, "python -m bench.sampler --store replay", "x.png")
    assert "| lru | substituting | 5.00 | 6.00 | 1.00x | 0.95 | 750 | 80% |" in md
    assert "store model" in md and "tmpfs (the ceiling): 1.20 s median, 1.50 worst" in md
    assert "![samplers](x.png)" in md
