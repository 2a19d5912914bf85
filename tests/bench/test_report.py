"""Report.median: several runs of one workload as one report (`parrotlet bench --repeat`)."""

from __future__ import annotations

import json
from pathlib import Path

from parrotlet.bench.report import Ratio, Report


def run(chat_s: float, jobs_s: float, ratio: float) -> Report:
    rows = {"parrotlet": {"chat_s": chat_s, "jobs_s": jobs_s}, "alone": {"chat_s": 1.0}}
    return Report("mixed", "cpu", "m", {"n": 3}, rows, [Ratio("alone / parrotlet", ratio, 0.9)])


def test_median_of_each_metric_and_ratio_keeps_every_run(tmp_path: Path) -> None:
    runs = [run(1.3, 5.0, 0.77), run(1.1, 9.0, 0.91), run(1.2, 4.0, 0.83)]

    report = Report.median(runs)

    assert report.rows == {"parrotlet": {"chat_s": 1.2, "jobs_s": 5.0}, "alone": {"chat_s": 1.0}}
    assert report.ratios == [Ratio("alone / parrotlet", 0.83, 0.9, (0.77, 0.91, 0.83))]
    assert report.ratios[0].met is False
    assert report.params == {"n": 3, "repeat": 3}
    assert report.runs == [r.rows for r in runs]
    assert "  alone / parrotlet: 0.83x (runs 0.77-0.91x)  (target >= 0.9x: missed)" in (
        report.table().splitlines()
    )
    data = json.loads(report.save(tmp_path).read_text())
    assert data["ratios"][0] | {"runs": tuple(data["ratios"][0]["runs"])} == {
        "name": "alone / parrotlet", "value": 0.83, "target": 0.9, "runs": (0.77, 0.91, 0.83),
        "met": False,
    }  # fmt: skip
    assert data["runs"][1] == runs[1].rows


def test_a_single_run_prints_no_spread() -> None:
    assert "  alone / parrotlet: 0.77x  (target >= 0.9x: missed)" in run(1.3, 5, 0.77).table()


def test_rows_and_ratios_some_runs_lack_take_the_median_of_those_that_have_them() -> None:
    a = Report("multi-app", "cpu", "m", {}, {"x: 2 req/s": {"ms": 3.0}, "x: 4 req/s": {"ms": 5.0}},
               [Ratio("rate", 1.5)])  # fmt: skip
    b = Report("multi-app", "cpu", "m", {}, {"x: 2 req/s": {"ms": 4.0}, "x: 3 req/s": {"ms": 9.0}},
               [Ratio("rate", 1.1), Ratio("other", 2.0)])  # fmt: skip

    report = Report.median([a, b])

    assert report.rows == {"x: 2 req/s": {"ms": 3.5}, "x: 4 req/s": {"ms": 5.0},
                           "x: 3 req/s": {"ms": 9.0}}  # fmt: skip
    assert report.ratios == [
        Ratio("rate", 1.3, None, (1.5, 1.1)),
        Ratio("other", 2.0, None, (2.0,)),
    ]
