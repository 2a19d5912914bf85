"""Smoke tests: each LangChain example's main() on the shared in-process client, small outputs."""

from __future__ import annotations

import pytest

import parrotlet as P
from examples import langchain_agent, langchain_map_reduce, langchain_refine, langchain_tools

pytestmark = pytest.mark.slow


def test_refine_example(client: P.Client, capsys: pytest.CaptureFixture[str]) -> None:
    summary = langchain_refine.main(client, max_tokens=6, num_chunks=2)
    assert summary != ""
    assert capsys.readouterr().out == f"{summary}\n(2 calls, 1 submission)\n"


def test_map_reduce_example(client: P.Client, capsys: pytest.CaptureFixture[str]) -> None:
    summary = langchain_map_reduce.main(client, max_tokens=6, num_chunks=2)
    assert summary != ""
    assert capsys.readouterr().out == (
        f"LangGraph Send map-reduce:\n{summary}\n\n"
        f"LCEL batch + reduce:\n{summary}\n"
        "(3 calls per app, 2 submissions)\n"
    )


def test_agent_example(client: P.Client, capsys: pytest.CaptureFixture[str]) -> None:
    answer = langchain_agent.main(client, max_tokens=12)
    assert capsys.readouterr().out == (
        f"tool call: calculator[17 * 23] -> 391\nanswer: {answer}\n(2 calls, 2 submissions)\n"
    )


def test_tools_example(client: P.Client, capsys: pytest.CaptureFixture[str]) -> None:
    answer, city = langchain_tools.main(client)
    assert (answer, city.city, city.country) == ("391", "Tokyo", "Japan")
    assert capsys.readouterr().out == (
        "tool call: multiply({'a': 17, 'b': 23})\ntool result: 391\nanswer: 391\n"
        "structured: City(city='Tokyo', country='Japan')\n"
    )
