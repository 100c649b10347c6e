"""Benchmark report assembly: a partial rerun (`gaussquant bench --only ...`) keeps the rest."""

from gaussquant.stages.bench import SUITES, _sections


def test_sections_are_split_by_suite_name():
    report = (
        "# Benchmarks\n\nMachine: x\n\n"
        "## gq: GQ search\n\n| a |\n|---|\n| 1 |\n\n"
        "## data: Loading\n\ntext\n## e2e: End to end\n\nlast\n"
    )
    got = _sections(report)
    assert list(got) == ["gq", "data", "e2e"] and set(got) <= set(SUITES)
    assert got["gq"].startswith("## gq: GQ search") and "| 1 |" in got["gq"]
    assert "## data" not in got["gq"] and got["e2e"].endswith("last\n")
