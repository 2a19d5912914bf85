"""Parrotlet as a LlamaIndex function-calling LLM on the default model (greedy): tools go to the
server's chat route, a required call is guided to a valid one, tool results go back as tool
messages; predict_and_call, structured_predict and streaming on top."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel

import parrotlet as P
from llama_index.llms.parrotlet import Parrotlet
from llama_index.llms.parrotlet.base import _tool_choice
from llama_index.llms.parrotlet.openai_routes import openai_messages

pytestmark = pytest.mark.slow
QUESTION = "What is 2 plus 3?"
CALL = {"name": "add", "arguments": '{"a": 2, "b": 3}'}


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


TOOLS = [FunctionTool.from_defaults(add), FunctionTool.from_defaults(multiply)]


def make_llm(client: P.Client) -> Parrotlet:
    return Parrotlet(client=client, max_tokens=32)


def test_a_required_call_is_a_valid_call_of_a_declared_tool(client: P.Client) -> None:
    llm = make_llm(client)

    response = llm.chat_with_tools(TOOLS, user_msg=QUESTION, tool_required=True)

    [call] = response.message.additional_kwargs["tool_calls"]
    assert call["function"] == CALL and call["id"].startswith("call_")
    [selection] = llm.get_tool_calls_from_response(response)
    assert (selection.tool_id, selection.tool_name, selection.tool_kwargs) == (
        call["id"], "add", {"a": 2, "b": 3})  # fmt: skip
    assert llm.metadata.is_function_calling_model


def test_predict_and_call_runs_the_tool(client: P.Client) -> None:
    output = make_llm(client).predict_and_call(TOOLS, user_msg=QUESTION, tool_required=True)

    assert str(output) == "5"


def test_structured_predict_is_a_guided_call(client: P.Client) -> None:
    class City(BaseModel):
        """A city and the country it is in."""

        city: str
        country: str

    prompt = PromptTemplate("Name the capital of {country}.")

    assert make_llm(client).structured_predict(City, prompt, country="Japan") == City(
        city="Tokyo", country="Japan"
    )


def test_a_streamed_call_ends_with_the_invoked_one(client: P.Client) -> None:
    llm = make_llm(client)

    responses = list(llm.stream_chat_with_tools(TOOLS, user_msg=QUESTION, tool_required=True))

    [call] = responses[-1].message.additional_kwargs["tool_calls"]
    assert call["function"] == CALL


def test_tool_results_go_back_as_tool_messages(client: P.Client) -> None:
    llm = make_llm(client)
    call = {"id": "call_1", "type": "function", "function": CALL}
    history = [
        ChatMessage(role=MessageRole.USER, content=QUESTION),
        ChatMessage(role=MessageRole.ASSISTANT, content="", additional_kwargs={"tool_calls":
                    [call]}),
        ChatMessage(role=MessageRole.TOOL, content="5", additional_kwargs={"tool_call_id":
                    "call_1", "name": "add"}),
    ]  # fmt: skip

    messages = openai_messages(history)
    reply = llm.chat_with_tools(TOOLS, chat_history=history)

    assert messages == [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "5", "tool_call_id": "call_1"},
    ]
    body = {"messages": messages, "max_tokens": 32, "temperature": 0.0, "top_p": 1.0,
            "top_k": -1, "stop": [], "tools": [t.metadata.to_openai_tool() for t in TOOLS],
            "tool_choice": "auto", "parallel_tool_calls": False}  # fmt: skip
    expected = client.openai.post("/v1/chat/completions", body)["choices"][0]["message"]
    assert reply.message.content == expected["content"]
    assert reply.message.additional_kwargs.get("tool_calls") == expected.get("tool_calls")


@pytest.mark.parametrize(("strict", "arguments"), [(False, {"town": "Oslo"}),
                                                  (True, {"city": "Oslo"})])  # fmt: skip
def test_strict_tools_guide_the_calls_the_model_makes_on_its_own(
    client: P.Client, strict: bool, arguments: dict[str, str]
) -> None:
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return "sunny"

    earlier = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"town": "Rome"}'},
    }  # not per the schema: the model copies it
    history = [ChatMessage(role=MessageRole.USER, content="Weather in Rome?"),
               ChatMessage(role=MessageRole.ASSISTANT, content="",
                           additional_kwargs={"tool_calls": [earlier]})]  # fmt: skip
    llm = make_llm(client)

    reply = llm.chat_with_tools([FunctionTool.from_defaults(get_weather)], "Weather in Oslo?",
                                chat_history=history, strict=strict)  # fmt: skip

    [selection] = llm.get_tool_calls_from_response(reply)
    assert (selection.tool_name, selection.tool_kwargs) == ("get_weather", arguments)


def test_no_tool_call_is_an_error_only_when_one_is_expected(client: P.Client) -> None:
    llm = make_llm(client)
    plain = ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content="hi"))

    assert llm.get_tool_calls_from_response(plain, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="expected at least one tool call, got 0"):
        llm.get_tool_calls_from_response(plain)


@pytest.mark.parametrize(
    ("choice", "required", "expected"),
    [
        (None, False, "auto"), (None, True, "required"), ("none", True, "none"),
        ("add", False, {"type": "function", "function": {"name": "add"}}),
        ({"type": "function", "function": {"name": "x"}}, False,
         {"type": "function", "function": {"name": "x"}}),
    ],
)  # fmt: skip
def test_tool_choice_in_llamaindexs_forms(choice: Any, required: bool, expected: Any) -> None:
    assert _tool_choice(choice, required) == expected
