"""make bench's report: the spread of per-repetition ratios under the table, and the cores-busy row."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import report  # noqa: E402


def _results() -> dict:
    def runs(rps: list[float], cores: float | None = None) -> list[dict]:
        return [{"rep": i, "rps": v, "p50_ms": 1.0, "p99_ms": 2.0, "p999_ms": 3.0,
                 **({"proxy_cpu_us_per_req": 1e6 * cores / v, "proxy_cpu_cores": cores} if cores else {})}
                for i, v in enumerate(rps)]
    return {
        "meta": {"started": "now", "nproc": 2, "dur": 5, "reps": 3, "certs": "test", "versions": {}},
        "configs": {"direct": {}, "glassmesh": {}, "nginx": {}},
        "runs": {
            "c32": {"direct": runs([200_000, 210_000, 205_000]),
                    "glassmesh": runs([30_000, 34_000, 31_000], 1.0),
                    "nginx": runs([33_000, 34_000, 35_000], 1.0)},
        },
    }


def test_the_spread_note_gives_the_lowest_and_highest_ratio_of_a_repetition_and_the_nginx_pairs_own_range() -> None:
    md = report.markdown(_results())
    line = next(x for x in md.splitlines() if x.startswith("- spread: req/s, 32 connections"))
    # per repetition: 30/33 = 0.909, 34/34 = 1.0, 31/35 = 0.886
    assert "glassmesh / nginx pair per repetition: 0.89x-1.00x (median 0.91x, 3 repetitions" in line
    assert "the nginx pair's own req/s 33,000-35,000" in line


def test_cores_busy_row_shows_each_pair_and_nothing_for_direct() -> None:
    md = report.markdown(_results())
    row = next(x for x in md.splitlines() if x.startswith("| proxy CPU cores busy"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "-"  # direct has no proxies
    assert cells[3].startswith("1.00 (1.00x n)") and cells[4] == "1.00"


def test_a_section_renders_with_its_ratios_to_the_base_column() -> None:
    """A section (bench/sections.py) is not the table: it has no configs, and its notes are its own."""
    def runs(rps: list[float], cpu: float) -> list[dict]:
        return [{"rep": i, "rps": v, "proxy_cpu_us_per_req": cpu} for i, v in enumerate(rps)]
    sec = {
        "name": "features", "title": "Features on and off", "intro": ["intro"], "base": "f_default",
        "variants": [{"key": "f_default", "label": "defaults", "failed": None},
                     {"key": "f_policy", "label": "traffic policy", "failed": None}],
        "runs": {"c32": {"f_default": runs([30_000, 31_000], 33.0), "f_policy": runs([29_000, 30_000], 34.0)}},
        "metrics": [["req/s, 32 connections", "higher", "c32", "rps", "int", "ratio"],
                    ["proxy CPU us per request, 32 conns", "lower", "c32", "proxy_cpu_us_per_req", "1", "ratio"]],
        "notes": ["a note"],
    }
    md = report.section_markdown(sec)
    cpu = next(x for x in md.splitlines() if x.startswith("| proxy CPU us per request"))
    assert "34.0 (1.03x)" in cpu
    assert "a note" in md and "spread" not in md
