"""ChatParrotlet.bind_tools and with_structured_output on the real default model (greedy): tools
go to the server's chat route, its tool calls (guided to valid JSON when a call is required)
come back as LangChain's, tool results go back as tool messages."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool
from pydantic import BaseModel

import parrotlet as P
from langchain_parrotlet import ChatParrotlet, parrotlet_graph, routes
from langchain_parrotlet.chat_models import _message, _tool_choice

from .conftest import Requests

pytestmark = pytest.mark.slow
QUESTION = "What is 2 plus 3?"


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


ADD = {"type": "function", "function": {"name": "add", "description": "Add two integers.",
       "parameters": {"properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                      "required": ["a", "b"], "type": "object"}}}  # fmt: skip


def make_chat(client: P.Client) -> ChatParrotlet:
    return ChatParrotlet(client=client, temperature=0, max_tokens=24)


def server_reply(chat: ChatParrotlet, messages: list[dict[str, Any]], **tools: Any) -> dict:
    """The server's own answer to the body ChatParrotlet should send."""
    body = {"messages": messages, "max_tokens": 24, "temperature": 0.0, "top_p": 1.0,
            "top_k": -1, "stop": [], **tools}  # fmt: skip
    return chat.connection().openai.post(routes.CHAT, body)["choices"][0]


def test_a_forced_call_comes_back_as_the_servers_tool_call(client: P.Client) -> None:
    chat = make_chat(client)
    requests = Requests(client)

    reply = chat.bind_tools([add], tool_choice="add").invoke(QUESTION)

    assert requests.delta() == {"complete": 1}
    named = {"type": "function", "function": {"name": "add"}}
    expected = server_reply(chat, [{"role": "user", "content": QUESTION}], tools=[ADD],
                            tool_choice=named)  # fmt: skip
    [raw] = expected["message"]["tool_calls"]
    assert raw["function"] == {"name": "add", "arguments": '{"a": 2, "b": 3}'}
    [call] = reply.tool_calls
    assert (reply.content, reply.invalid_tool_calls) == ("", [])
    assert (call["name"], call["args"]) == ("add", {"a": 2, "b": 3})
    assert reply.response_metadata["finish_reason"] == expected["finish_reason"] == "tool_calls"


def test_auto_tools_and_a_plain_answer(client: P.Client) -> None:
    chat = make_chat(client)

    reply = chat.bind_tools([add]).invoke(QUESTION)

    expected = server_reply(chat, [{"role": "user", "content": QUESTION}], tools=[ADD])
    assert reply.content == expected["message"]["content"] == "2 + 3 = 5"
    assert reply.tool_calls == [] and reply.invalid_tool_calls == []


def test_a_streamed_call_adds_up_to_the_invoked_one(client: P.Client) -> None:
    bound = make_chat(client).bind_tools([add], tool_choice=True)

    chunks = list(bound.stream(QUESTION))
    whole = bound.invoke(QUESTION)

    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    [call_chunk] = merged.tool_call_chunks
    assert (call_chunk["name"], call_chunk["args"], call_chunk["index"]) == (
        "add", '{"a": 2, "b": 3}', 0)  # fmt: skip
    assert merged.tool_calls[0]["args"] == whole.tool_calls[0]["args"] == {"a": 2, "b": 3}


def test_tool_results_go_back_as_tool_messages(client: P.Client) -> None:
    chat = make_chat(client)
    call = {"name": "add", "args": {"a": 2, "b": 3}, "id": "call_7", "type": "tool_call"}
    history = [HumanMessage(QUESTION), AIMessage("", tool_calls=[call]),
               ToolMessage("5", tool_call_id="call_7")]  # fmt: skip

    dicts = routes.message_dicts(history)
    reply = chat.bind_tools([add]).invoke(history)

    assert dicts == [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_7", "type": "function",
         "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
        {"role": "tool", "content": "5", "tool_call_id": "call_7"},
    ]  # fmt: skip
    assert reply.content == server_reply(chat, dicts, tools=[ADD])["message"]["content"]


def test_bound_tools_run_eagerly_inside_a_graph_scope(client: P.Client) -> None:
    chat = make_chat(client)
    requests = Requests(client)

    with parrotlet_graph(chat):
        reply = chat.bind_tools([add], tool_choice="add").invoke(QUESTION)
        assert type(reply.content) is str and reply.tool_calls[0]["args"] == {"a": 2, "b": 3}

    assert requests.delta() == {"complete": 1}


def test_structured_output_is_a_guided_tool_call(client: P.Client) -> None:
    class City(BaseModel):
        """A city and the country it is in."""

        city: str
        country: str

    structured = make_chat(client).with_structured_output(City)

    bound = structured.first  # type: ignore[attr-defined]
    assert bound.kwargs["tool_choice"] == "required"
    assert [t["function"]["name"] for t in bound.kwargs["tools"]] == ["City"]
    assert structured.invoke("Name the capital of Japan.") == City(city="Tokyo", country="Japan")


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return "sunny"


@pytest.mark.parametrize(("strict", "args"), [(None, {"town": "Oslo"}), (True, {"city": "Oslo"})])
def test_strict_tools_guide_the_calls_the_model_makes_on_its_own(
    client: P.Client, strict: bool | None, args: dict[str, str]
) -> None:
    bound = make_chat(client).bind_tools([get_weather], strict=strict)
    earlier = {"name": "get_weather", "args": {"town": "Rome"}, "id": "call_1"}  # not per the
    # schema: the model copies it
    history = [HumanMessage("Weather in Rome?"), AIMessage("", tool_calls=[earlier])]

    reply = bound.invoke([*history, HumanMessage("Weather in Oslo?")])

    assert bound.kwargs["tools"][0]["function"].get("strict") is strict
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("get_weather", args)]


def test_replies_tool_calls_parse_into_langchains() -> None:
    raw = [
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}},
        {"id": "c2", "type": "function", "function": {"name": "add", "arguments": "{oops"}},
    ]

    message = _message(routes.Delta("", "tool_calls", 3, 4, tuple(raw)), "m")

    assert message.tool_calls == [
        {"name": "add", "args": {"a": 1}, "id": "c1", "type": "tool_call"}
    ]
    [invalid] = message.invalid_tool_calls
    assert (invalid["name"], invalid["args"], invalid["id"]) == ("add", "{oops", "c2")
    assert json.loads(json.dumps(message.tool_calls[0]["args"])) == {"a": 1}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, None), (False, None), ("auto", "auto"), ("none", "none"), ("any", "required"),
        ("required", "required"), ("add", {"type": "function", "function": {"name": "add"}}),
        (True, {"type": "function", "function": {"name": "add"}}),
        ({"type": "function", "function": {"name": "x"}},
         {"type": "function", "function": {"name": "x"}}),
    ],
)  # fmt: skip
def test_tool_choice_in_langchains_forms(choice: Any, expected: Any) -> None:
    assert _tool_choice(choice, [ADD]) == expected


def test_bad_tool_choice() -> None:
    with pytest.raises(ValueError, match="tool_choice=True needs exactly one tool, got 2"):
        _tool_choice(True, [ADD, ADD])
    with pytest.raises(ValueError, match="tool_choice must be a string, a dict or a bool"):
        _tool_choice(3, [ADD])


def test_response_format_keeps_a_structured_map_in_the_graph(client: P.Client) -> None:
    """`bind(response_format=...)` guides a call's output to JSON of the schema; inside a
    graph scope the structured maps feed the reduce on the server: one submit."""
    schema = {"type": "object", "properties": {"topic": {"type": "string", "maxLength": 30}},
              "required": ["topic"]}  # fmt: skip
    chat = make_chat(client)
    response_format = {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}
    structured = chat.bind(response_format=response_format)
    extract = (ChatPromptTemplate.from_messages([("human", "The topic of: {text}")])
               | structured | StrOutputParser())  # fmt: skip
    title = (ChatPromptTemplate.from_messages([("human", "A title for: {topics}")])
             | chat | StrOutputParser())  # fmt: skip
    texts = [{"text": "Cats purr when they are happy."}, {"text": "The sea is deep and cold."}]
    requests = Requests(client)

    with parrotlet_graph(chat):
        records = extract.batch(texts)
        headline = title.invoke({"topics": "\n".join(records)})
        headline_text = str(headline)  # the first read: one submit of all three calls

    assert requests.submits() == 1
    eager = [extract.invoke(t) for t in texts]  # outside the scope: one request each
    assert [str(r) for r in records] == eager
    assert all(set(json.loads(r)) == {"topic"} for r in eager)
    assert headline_text == title.invoke({"topics": "\n".join(eager)})


def test_replies_name_the_served_model(client: P.Client) -> None:
    """LangChain's usage callbacks need `response_metadata["model_name"]`: the server's name
    when the model object names none."""
    chat = make_chat(client)

    reply = chat.invoke(QUESTION)
    merged = None
    for chunk in chat.stream(QUESTION):
        merged = chunk if merged is None else merged + chunk

    assert reply.response_metadata["model_name"] == "SmolLM2-135M-Instruct"
    assert merged is not None and merged.response_metadata["model_name"] == "SmolLM2-135M-Instruct"


def test_tool_use_blocks_of_an_ai_message_are_its_tool_calls() -> None:
    call = {"name": "add", "args": {"a": 1, "b": 2}, "id": "c1", "type": "tool_call"}
    use = {"type": "tool_use", "id": "c1", "name": "add", "input": {"a": 1, "b": 2}}
    blocks = [{"type": "text", "text": "Adding."}, use]

    [message] = routes.message_dicts([AIMessage(blocks, tool_calls=[call])])

    assert message == {"role": "assistant", "content": "Adding.", "tool_calls": [{"id": "c1",
                       "type": "function", "function": {"name": "add",
                       "arguments": '{"a": 1, "b": 2}'}}]}  # fmt: skip
    with pytest.raises(ValueError, match="parrotlet takes text content only"):
        routes.message_dicts([AIMessage(blocks)])  # a tool_use block without the call
