"""System + human prompts inside a graph scope: each ChatPromptTemplate step with a system
message is ONE chat call with Role segments (graph/ir.py), so a two-step chain is ONE submission,
and it generates exactly what the eager `/v1/chat/completions` route generates."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

import parrotlet as P
from langchain_parrotlet import ChatParrotlet, SemanticText, parrotlet_graph

from .conftest import Requests

pytestmark = pytest.mark.slow
TEXT = "Cats purr when they are happy and sleep most of the day."
SUMMARIZER = "You summarize in one short sentence."
SHORTENER = "You answer with at most five words."


def make_chat(client: P.Client) -> ChatParrotlet:
    return ChatParrotlet(client=client, temperature=0, max_tokens=12)


def two_steps(chat: ChatParrotlet, text: str) -> str:
    summarize = ChatPromptTemplate.from_messages(
        [("system", SUMMARIZER), ("human", "Summarize: {text}")]
    )
    shorten = ChatPromptTemplate.from_messages(
        [("system", SHORTENER), ("human", "Shorten: {text}")]
    )
    summary = (summarize | chat | StrOutputParser()).invoke({"text": text})
    return (shorten | chat | StrOutputParser()).invoke({"text": summary})


def test_system_prompt_chain_is_one_submission_and_equals_eager(client: P.Client) -> None:
    chat = make_chat(client)
    requests = Requests(client)
    eager = two_steps(chat, TEXT)
    assert requests.delta() == {"complete": 2}
    assert eager == "Cats purr when they are happy and sleep most of the"  # 12 tokens
    requests = Requests(client)
    with parrotlet_graph(chat):
        out = two_steps(chat, TEXT)
        assert isinstance(out, SemanticText) and requests.delta() == {}  # nothing sent yet
        assert out == eager  # Python reads the text: the one submission
    assert requests.delta() == {"create_session": 1, "submit": 1, "get": 2, "delete_session": 1}


def test_tool_messages_keep_the_eager_route(client: P.Client) -> None:
    chat = ChatParrotlet(client=client, temperature=0, max_tokens=4)
    messages = [
        SystemMessage("Be brief."),
        HumanMessage("Weather?"),
        AIMessage("", tool_calls=[{"name": "weather", "args": {}, "id": "t1"}]),
        ToolMessage("Sunny.", tool_call_id="t1"),
    ]
    requests = Requests(client)
    with parrotlet_graph(chat):
        reply = chat.invoke(messages)
        assert not isinstance(reply.content, SemanticText)
    assert requests.delta()["complete"] == 1 and requests.submits() == 0
