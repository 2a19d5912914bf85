"""The application workloads, by the name `parrotlet bench` takes; each is
`async run(bench, smoke) -> Report`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from parrotlet.bench.report import Report
from parrotlet.bench.setup import Bench
from parrotlet.bench.workloads import chain_summary

Workload = Callable[[Bench, bool], Awaitable[Report]]

WORKLOADS: dict[str, Workload] = {
    "chain-summary": chain_summary.run,
}
