"""A workload's results: rows of metrics per variant, the headline ratios with their targets, a
printed table and a JSON file (benchmarks/apps/results/ by default, and $OUT when set)."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch


@dataclass(frozen=True)
class Ratio:
    """`value` = baseline / parrotlet of one metric (higher is better for parrotlet)."""

    name: str
    value: float
    target: float | None = None
    runs: tuple[float, ...] = ()  # each run's value when `value` is their median

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.value >= self.target


@dataclass
class Report:
    workload: str
    device: str
    model: str
    params: dict = field(default_factory=dict)
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    ratios: list[Ratio] = field(default_factory=list)
    runs: list[dict[str, dict[str, float]]] = field(default_factory=list)  # each run's rows

    @classmethod
    def median(cls, reports: list[Report]) -> Report:
        """Several runs of one workload as one report: each metric and each ratio the median of
        the runs that have it (a ratio is taken within a run, whose variants ran side by side;
        a search such as multi-app's may probe other rows in each run), every run kept."""
        first = reports[0]
        rows = {}
        for row in dict.fromkeys(row for r in reports for row in r.rows):
            present = [r.rows[row] for r in reports if row in r.rows]
            metrics = dict.fromkeys(m for p in present for m in p)
            rows[row] = {m: statistics.median(p[m] for p in present if m in p) for m in metrics}
        ratios = []
        for name in dict.fromkeys(x.name for r in reports for x in r.ratios):
            found = [x for r in reports for x in r.ratios if x.name == name]
            values = tuple(x.value for x in found)
            ratios.append(Ratio(name, statistics.median(values), found[0].target, values))
        params = first.params | {"repeat": len(reports)}
        runs = [r.rows for r in reports]
        return cls(first.workload, first.device, first.model, params, rows, ratios, runs)

    def table(self) -> str:
        lines = [f"== {self.workload} on {card_name(self.device)}, model {self.model} =="]
        metrics = sorted({m for row in self.rows.values() for m in row})
        width = max([len(n) for n in self.rows] + [8])
        lines.append(f"{'variant':<{width}}" + "".join(f"{m:>16}" for m in metrics))
        for name, row in self.rows.items():
            cells = "".join(f"{_fmt(row.get(m)):>16}" for m in metrics)
            lines.append(f"{name:<{width}}{cells}")
        for r in self.ratios:
            target = "" if r.target is None else f"  (target >= {r.target:g}x: "
            target += "" if r.met is None else ("met)" if r.met else "missed)")
            spread = f" (runs {min(r.runs):.2f}-{max(r.runs):.2f}x)" if r.runs else ""
            lines.append(f"  {r.name}: {r.value:.2f}x{spread}{target}")
        return "\n".join(lines)

    def save(self, folder: str | Path) -> Path:
        data = asdict(self) | {
            "card": card_name(self.device),
            "date": time.strftime("%Y-%m-%d"),
            "ratios": [asdict(r) | {"met": r.met} for r in self.ratios],
        }
        text = json.dumps(_finite(data), indent=2, allow_nan=False) + "\n"
        name = f"{self.workload}-{self.device.split(':')[0]}.json"
        path = Path(folder) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], name).write_text(text)
        return path


def card_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"


def _finite(value):
    """`value` with every inf/nan float written as a string: strict JSON has no Infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"
