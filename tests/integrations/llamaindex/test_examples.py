"""examples/llamaindex_query.py runs on CPU with the default model: both response modes answer,
each query in ONE graph submit."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

import parrotlet as P

EXAMPLE = Path(__file__).parents[3] / "examples" / "llamaindex_query.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("llamaindex_query", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_llamaindex_query_example(client: P.Client, capsys: pytest.CaptureFixture[str]):
    before = client.core.stats().client_requests.get("submit", 0)
    answers = load_example().main(client)
    assert client.core.stats().client_requests.get("submit", 0) - before == 2
    assert list(answers) == ["refine", "tree_summarize"]
    assert all(answers.values())
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"refine: {answers['refine'].splitlines()[0]}"
    assert f"tree_summarize: {answers['tree_summarize'].splitlines()[0]}" in lines
