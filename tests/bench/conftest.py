"""Benchmark fixtures: one tiny random-weight Llama with the default model's tokenizer."""

from __future__ import annotations

import pytest

from parrotlet.bench.setup import Bench, BenchSpec
from parrotlet.bench.synthetic import SyntheticText
from parrotlet.engine.scheduler import Scheduler


@pytest.fixture(scope="session")
def tiny_bench(default_model_dir) -> Bench:
    return Bench(BenchSpec(arch="tiny-random"))


@pytest.fixture(scope="session")
def synthetic(tiny_bench: Bench) -> SyntheticText:
    return SyntheticText(tiny_bench.tokenizer, seed=7)


@pytest.fixture
def admissions(monkeypatch) -> list[tuple[int, int, bool]]:
    """(prompt tokens, priority class, in a task group) of each sequence the engine queues."""
    seen: list[tuple[int, int, bool]] = []
    add = Scheduler.add

    def record(self, seq):
        seen.append((seq.num_tokens, seq.priority_class, seq.group is not None))
        add(self, seq)

    monkeypatch.setattr(Scheduler, "add", record)
    return seen
