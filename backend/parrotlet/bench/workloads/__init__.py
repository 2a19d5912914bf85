"""The application workloads by the name `parrotlet bench` takes. Each module has
`async def run(bench: Bench, smoke: bool) -> Report`; modules are imported when run."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable

from parrotlet.bench.report import Report
from parrotlet.bench.setup import Bench

Workload = Callable[[Bench, bool], Awaitable[Report]]

WORKLOADS: dict[str, str] = {
    "chain-summary": "chain_summary",
    "map-reduce": "map_reduce",
    "shared-prompt": "shared_prompt",
    "multi-agent": "multi_agent",
    "mixed": "mixed",
    "multi-app": "multi_app",
}


def workload(name: str) -> Workload:
    """The `run` function of workload `name`."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    return importlib.import_module(f"{__name__}.{WORKLOADS[name]}").run
