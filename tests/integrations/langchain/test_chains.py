"""Chains become graphs: the refine chain, both map-reduce variants and the agent of examples/,
each run eagerly (one request per call) and inside `parrotlet_graph` on the default model with
greedy decoding. Same outputs; submissions counted by the server: 1 per app, or 1 per stage where
Python reads text."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import parrotlet as P
from examples.langchain_agent import run_agent
from examples.langchain_map_reduce import (
    build_graph,
    chains,
    langgraph_map_reduce,
    lcel_map_reduce,
)
from examples.langchain_refine import refine_summary
from langchain_parrotlet import (
    ChatParrotlet,
    ParrotletLLM,
    SemanticText,
    as_graph,
    parrotlet_graph,
)

from .conftest import Requests

pytestmark = pytest.mark.slow
DOCS = [
    "Cats purr when they are happy and sleep most of the day.",
    "Dogs bark at strangers and love long walks in the park.",
    "Birds sing at dawn and fly south when winter comes.",
]


def make_chat(client: P.Client) -> ChatParrotlet:
    return ChatParrotlet(client=client, temperature=0, max_tokens=10)


def test_refine_chain_is_one_submission(client: P.Client) -> None:
    chat = make_chat(client)
    requests = Requests(client)
    eager = refine_summary(chat, DOCS)
    assert requests.delta() == {"complete": 3}
    requests = Requests(client)
    with parrotlet_graph(chat):
        summary = refine_summary(chat, DOCS)
        assert isinstance(summary, SemanticText) and requests.delta() == {}  # nothing sent yet
        assert summary == eager  # Python reads the text: the one submission
    assert requests.delta() == {"create_session": 1, "submit": 1, "get": 3, "delete_session": 1}


def test_the_one_submission_names_every_output_the_scope_fetches(
    client: P.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading one output fetches all of the scope's; the submit names them, so no call waits
    for its own get to start (the one read with "latency", the rest "throughput")."""
    chat = make_chat(client)
    announced = []
    create_session = client.core.create_session

    def recording(tenant: str, **kwargs: Any) -> str:
        announced.append(kwargs.get("fetch"))
        return create_session(tenant, **kwargs)

    monkeypatch.setattr(client.core, "create_session", recording)
    with parrotlet_graph(chat):
        str(refine_summary(chat, DOCS))
    assert announced == [
        {"lc-3.out": "latency", "lc-1.out": "throughput", "lc-2.out": "throughput"}
    ]


def test_refine_with_the_text_llm_and_a_look_in_between(client: P.Client) -> None:
    """ParrotletLLM + PromptTemplate; reading an intermediate summary flushes there (2 stages)."""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import PromptTemplate

    llm = ParrotletLLM(client=client, temperature=0, max_tokens=10, chat=True)
    first = PromptTemplate.from_template("Summarize:\n{text}") | llm | StrOutputParser()
    refine = (
        PromptTemplate.from_template("Summary so far:\n{summary}\n\nAdd this:\n{text}")
        | llm
        | StrOutputParser()
    )
    eager_first = first.invoke({"text": DOCS[0]})
    eager = refine.invoke({"summary": eager_first, "text": DOCS[1]})
    requests = Requests(client)
    with parrotlet_graph(llm):
        summary = first.invoke({"text": DOCS[0]})
        looked = summary.startswith(eager_first[:5])  # Python inspects it: stage 1 ends
        refined = refine.invoke({"summary": summary, "text": DOCS[1]})
    assert looked is True and summary == eager_first and refined == eager
    assert requests.submits() == 2


def test_langgraph_send_map_reduce_is_one_submission(client: P.Client) -> None:
    chat = make_chat(client)
    requests = Requests(client)
    eager = asyncio.run(langgraph_map_reduce(chat, DOCS))
    assert requests.delta() == {"complete": 4}
    requests = Requests(client)
    with parrotlet_graph(chat):
        final = asyncio.run(langgraph_map_reduce(chat, DOCS))
        assert final == eager
    assert requests.delta() == {"create_session": 1, "submit": 1, "get": 4, "delete_session": 1}
    requests = Requests(client)
    state = asyncio.run(as_graph(build_graph(chat), chat).ainvoke({"contents": DOCS}))
    assert type(state["final_summary"]) is str and state["final_summary"] == eager
    assert requests.submits() == 1


def test_lcel_batch_map_reduce_is_one_submission(client: P.Client) -> None:
    chat = make_chat(client)
    map_chain, reduce_chain = chains(chat)
    requests = Requests(client)
    summaries = [map_chain.invoke({"context": d}) for d in DOCS]  # eager: one request per call
    eager = reduce_chain.invoke({"docs": "\n\n".join(summaries)})
    assert requests.delta() == {"complete": 4}
    requests = Requests(client)
    with parrotlet_graph(chat):
        final = lcel_map_reduce(chat, DOCS)
        assert final == eager
    assert requests.submits() == 1
    requests = Requests(client)
    assert lcel_map_reduce(chat, DOCS) == eager  # no scope: the batch is one graph, then 1 call
    assert requests.delta() == {
        "create_session": 1,
        "submit": 1,
        "get": 3,
        "delete_session": 1,
        "complete": 1,
    }
    requests = Requests(client)
    assert as_graph(map_chain, chat).batch([{"context": d} for d in DOCS]) == summaries
    assert requests.submits() == 1


def test_agent_reads_the_tool_call_then_continues_in_the_graph(client: P.Client) -> None:
    chat = make_chat(client)
    question = "What is 17 times 23?"
    eager = run_agent(chat, question)
    requests = Requests(client)
    with parrotlet_graph(chat):
        expression, observation, answer = run_agent(chat, question)
        assert type(expression) is str  # the parser got real text, as in plain LangChain
        assert (expression, observation, answer) == eager
    assert requests.submits() == 2  # the tool-call stage, then the answer stage
    assert eager[:2] == ("17 * 23", "391")
