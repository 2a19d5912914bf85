"""The graphs chains become, offline (a session that only builds graphs): exact calls,
dependencies and prompt transforms of the refine chain and the LCEL map-reduce; as_graph."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

import parrotlet as P
from examples.langchain_map_reduce import MAP, REDUCE, lcel_map_reduce
from examples.langchain_refine import REFINE, SUMMARIZE, refine_summary
from langchain_parrotlet import ChatParrotlet, SemanticText, as_graph, parrotlet_graph
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.graph.ir import Call, Graph, Input, Output, Role, Text, Transform

from .test_system_prompt import SHORTENER, SUMMARIZER, TEXT, two_steps

GREEDY_4 = SamplingParams(temperature=0, max_tokens=4)


class OfflinePortal:
    """Answers every fetch with a fixed value, without a server."""

    def submit(self, fetch: Any) -> Future[P.VariableResult]:
        fetch.close()
        done: Future[P.VariableResult] = Future()
        done.set_result(P.VariableResult("x", "value"))
        return done


@pytest.fixture
def chat(monkeypatch: pytest.MonkeyPatch) -> Iterator[ChatParrotlet]:
    connection = SimpleNamespace(client=SimpleNamespace(session=P.Session), portal=OfflinePortal())
    monkeypatch.setattr(ChatParrotlet, "connection", lambda self: connection)
    yield ChatParrotlet(temperature=0, max_tokens=4)


def call(call_id: str, *segments: Text | Input) -> Call:
    return Call(call_id, (*segments, Output(f"{call_id}.out", GREEDY_4)), chat=True)


def prompt(node_id: str, template: str, *inputs: str) -> Transform:
    return Transform(node_id, "format", inputs, node_id, {"template": template})


def test_refine_chain_is_a_chain_of_calls(chat: ChatParrotlet) -> None:
    with parrotlet_graph(chat) as scope:
        summary = refine_summary(chat, ["A.", "B.", "C."])
        graph = scope.session.take_pending()
    assert isinstance(summary, SemanticText)
    refine = REFINE.replace("{summary}", "{0}")
    assert graph == Graph(
        calls=(
            call("lc-1", Text(SUMMARIZE.format(context="A."))),
            call("lc-2", Input("lc-prompt-1")),
            call("lc-3", Input("lc-prompt-2")),
        ),
        transforms=(
            prompt("lc-prompt-1", refine.replace("{context}", "B."), "lc-1.out"),
            prompt("lc-prompt-2", refine.replace("{context}", "C."), "lc-2.out"),
        ),
    )


def test_lcel_map_reduce_is_three_calls_into_one(chat: ChatParrotlet) -> None:
    with parrotlet_graph(chat) as scope:
        lcel_map_reduce(chat, ["A.", "B.", "C."])
        graph = scope.session.take_pending()
    maps = {c.segments[0].text: c.id for c in graph.calls[:3]}  # batch threads pick the ids
    assert sorted(maps.values()) == ["lc-1", "lc-2", "lc-3"]
    texts = [MAP.format(context=c) for c in ("A.", "B.", "C.")]
    expected = sorted((call(maps[t], Text(t)) for t in texts), key=_id)
    assert sorted(graph.calls[:3], key=_id) == expected
    reduce = REDUCE.format(docs="{0}\n\n{1}\n\n{2}")
    outputs = [f"{maps[t]}.out" for t in texts]
    assert graph.calls[3:] == (call("lc-4", Input("lc-prompt-1")),)
    assert graph.transforms == (prompt("lc-prompt-1", reduce, *outputs),)
    assert graph.variables == ()


def _id(c: Call) -> str:
    return c.id


def test_as_graph_returns_plain_values(chat: ChatParrotlet) -> None:
    chain = ChatPromptTemplate.from_messages([("human", "{x}")]) | chat | StrOutputParser()
    converted = as_graph(chain, chat)
    assert converted.invoke({"x": "a"}) == "value"
    outputs = converted.batch([{"x": "a"}, {"x": "b"}])
    assert outputs == ["value", "value"] and all(type(o) is str for o in outputs)
    message = as_graph(chat, chat).invoke("hi")
    assert type(message.content) is str and message.content == "value"


def test_system_prompt_steps_are_calls_with_role_segments(chat: ChatParrotlet) -> None:
    with parrotlet_graph(chat) as scope:
        two_steps(chat, TEXT)
        graph = scope.session.take_pending()
    sampling = GREEDY_4
    assert graph == Graph(
        calls=(
            Call(
                "lc-1",
                (Role("system"), Text(SUMMARIZER), Role("user"), Text(f"Summarize: {TEXT}"),
                 Output("lc-1.out", sampling)),
            ),
            Call(
                "lc-2",
                (Role("system"), Text(SHORTENER), Role("user"), Input("lc-prompt-1"),
                 Output("lc-2.out", sampling)),
            ),
        ),
        transforms=(
            Transform("lc-prompt-1", "format", ("lc-1.out",), "lc-prompt-1",
                      {"template": "Shorten: {0}"}),
        ),
    )  # fmt: skip
