"""Benchmark fixtures: one tiny random-weight Llama with the default model's tokenizer."""

from __future__ import annotations

import pytest

from parrotlet.bench.setup import Bench, BenchSpec
from parrotlet.bench.synthetic import SyntheticText


@pytest.fixture(scope="session")
def tiny_bench(default_model_dir) -> Bench:
    return Bench(BenchSpec(arch="tiny-random"))


@pytest.fixture(scope="session")
def synthetic(tiny_bench: Bench) -> SyntheticText:
    return SyntheticText(tiny_bench.tokenizer, seed=7)
