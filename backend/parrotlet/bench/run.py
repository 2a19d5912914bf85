"""`parrotlet bench`: load the model once, run the named workloads, print and save their tables."""

from __future__ import annotations

import asyncio
import os
import time
import traceback
from pathlib import Path

from parrotlet.bench.report import Report
from parrotlet.bench.setup import Bench, BenchSpec
from parrotlet.bench.workloads import WORKLOADS, workload

RESULTS = Path("benchmarks/apps/results")


def run_bench(
    names: list[str], spec: BenchSpec, *, smoke: bool, out: Path = RESULTS, repeat: int = 1
) -> list[Report]:
    """Run each workload of `names` ("all" for every one) on one loaded model, `repeat` times
    in a row (its report then gives medians and each run's values). A workload that fails is
    reported and skipped; BenchFailed lists them after the others ran."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    selected = list(WORKLOADS) if "all" in names else names
    runs = [workload(name) for name in selected]  # unknown names fail before the model loads
    started = time.perf_counter()
    bench = Bench(spec)
    print(f"loaded {spec.model_name} on {spec.device} in {time.perf_counter() - started:.1f} s")
    reports, failed = [], []
    for name, run in zip(selected, runs, strict=True):
        started = time.perf_counter()
        try:
            repeats = [asyncio.run(run(bench, smoke)) for _ in range(repeat)]
            report = repeats[0] if repeat == 1 else Report.median(repeats)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        print(report.table(), flush=True)
        elapsed = time.perf_counter() - started
        print(f"  {name} took {elapsed:.1f} s -> {report.save(out)}", flush=True)
        reports.append(report)
    if failed:
        raise BenchFailed(f"workloads failed: {', '.join(failed)}")
    return reports


class BenchFailed(RuntimeError):
    """Some workloads raised (their tracebacks were printed); the others' reports were saved."""
