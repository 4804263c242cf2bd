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
