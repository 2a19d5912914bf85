"""A tenant's transforms cannot stall or exhaust the server: long chains run without recursion,
a failure deep in a chain reports its root cause in one line, outputs are bounded, and a regex
that backtracks runs off the event loop while other sessions go on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from parrotlet.engine.tokenizer import load_tokenizer
from parrotlet.graph import transforms
from parrotlet.graph.ir import Graph, GraphError, PerfCriterion, Transform, Variable
from parrotlet.serve.core import ServeCore
from parrotlet.serve.engines import ModelInfo

from .fake_engines import FakeEngine

pytestmark = pytest.mark.anyio


@pytest.fixture
def core(default_model_dir: Path) -> ServeCore:
    """Transforms only: the engine is never asked for a token."""
    return ServeCore([FakeEngine("e")], load_tokenizer(default_model_dir), ModelInfo("m", 64, ()))


def chain(op: str, args: dict, length: int, first: str, prefix: str = "v") -> Graph:
    """v0 (set to `first`) -> t1 -> v1 -> ... -> v{length}: each link `op` of the one before."""
    names = [f"{prefix}{i}" for i in range(length + 1)]
    variables = (Variable(names[0], first), *(Variable(n) for n in names[1:]))
    links = tuple(
        Transform(f"t{i}", op, (names[i - 1],), names[i], args) for i in range(1, length + 1)
    )
    return Graph(variables, (), links)


async def fetch(core: ServeCore, graph: Graph, sink: str) -> str:
    session = await core.create_session("a")
    await core.submit("a", session, graph, fetch={sink: "latency"})
    return (await core.get_variable("a", session, sink, timeout=10)).value


async def test_a_chain_of_4000_transforms_runs_without_recursion(core: ServeCore) -> None:
    graph = chain("slice", {"start": 1, "stop": None}, 4000, "x" * 4003)

    assert await fetch(core, graph, "v4000") == "xxx"


async def test_a_failure_deep_in_a_chain_reports_its_root_cause_in_one_line(
    core: ServeCore,
) -> None:
    graph = chain("format", {"template": "{0}{0}"}, 4000, "x" * 100_000)

    with pytest.raises(GraphError) as failed:
        await fetch(core, graph, "v4000")

    assert str(failed.value) == (
        "variable 'v4000' could not be produced: input 'v3999' failed: transform 't4' (format) "
        "would output 1600000 chars, the limit is 1000000"
    )


async def test_a_backtracking_regex_fails_while_other_sessions_go_on(
    core: ServeCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transforms, "REGEX_TIMEOUT_S", 0.5)
    slow = Graph(
        (Variable("text", "a" * 60 + "b"), Variable("match")),
        (),
        (Transform("rx", "regex", ("text",), "match", {"pattern": "(a|aa)+$"}),),
    )
    session = await core.create_session("a")
    await core.submit("a", session, slow, fetch={"match": "latency"})
    started = time.perf_counter()

    other = await fetch(core, chain("strip", {}, 3, "  hi  "), "v3")  # while the regex runs
    other_s = time.perf_counter() - started
    with pytest.raises(GraphError) as failed:
        await core.get_variable("a", session, "match", criterion=PerfCriterion.LATENCY)

    assert other == "hi" and other_s < 0.25
    assert str(failed.value) == (
        "variable 'match' could not be produced: transform 'rx' (regex) gave up after 0.5 s: "
        "the pattern backtracks without end on this input"
    )
