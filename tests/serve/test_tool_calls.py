"""Tool calling's request checks, prompt formats and reply parsing (serve/tool_calls.py,
serve/tool_call_reader.py), without a model: the server side is in test_openai_tools.py."""

from __future__ import annotations

import json
from typing import Any

import llguidance
import pytest

from parrotlet.engine.guide import Guide
from parrotlet.serve.tool_call_reader import ToolCallReader
from parrotlet.serve.tool_calls import (
    FALLBACK,
    HERMES,
    LLAMA3,
    MISTRAL,
    ToolRequest,
    fallback_messages,
    message_calls,
    reply_guide,
    reply_opening,
    template_format,
    tool_request,
)


def function(name: str, **extra: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, **extra}}


TOOLS = [function("get_weather", parameters={"type": "object"}), function("add")]
AUTO = tool_request(TOOLS, None, None)


def read(text: str, request: ToolRequest | None = AUTO, opening: str = "", step: int = 1):
    """(content streamed, content at the end, [(name, arguments)]) for `text` fed in pieces."""
    assert request is not None
    reader = ToolCallReader(request, opening)
    streamed = "".join(reader.feed(text[i : i + step]) for i in range(0, len(text), step))
    rest, calls = reader.finish()
    return streamed, rest, [(c.name, c.arguments) for c in calls]


@pytest.mark.parametrize("step", [1, 4, 1000])
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('Sure.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
         '\n<tool_call>{"name":"add","arguments":{"a":1}}</tool_call>',
         ("Sure.", "", [("get_weather", '{"city": "Paris"}'), ("add", '{"a": 1}')])),
        (' {"name": "get_weather", "parameters": {"city": "Paris"}}',
         ("", "", [("get_weather", '{"city": "Paris"}')])),
        ('<|python_tag|>{"name": "add", "parameters": {"a": 2}}<|eom_id|>',
         ("", "", [("add", '{"a": 2}')])),
        ('[TOOL_CALLS] [{"name": "add", "arguments": {"a": 2}}, '
         '{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}]',
         ("", "", [("add", '{"a": 2}'), ("get_weather", '{"city": "Rome"}')])),
        ('<tool_call>{"name": "add"}</tool_call> Done.', ("", "Done.", [("add", "{}")])),
        (" Hello <tool world, no call.", (" Hello <tool world, no call.", "", [])),
        ('{"answer": 42}', ("", '{"answer": 42}', [])),  # JSON, but not a call
        ('<tool_call>{"name": "nope", "arguments": {}}</tool_call>',
         ("", '<tool_call>{"name": "nope", "arguments": {}}</tool_call>', [])),  # undeclared
        ('<tool_call>{"name": "add", "arguments": {"a": 1',
         ("", '<tool_call>{"name": "add", "arguments": {"a": 1', [])),  # cut off
        ('<tool_call>{"name": "add", "arguments": [1]}</tool_call>',
         ("", '<tool_call>{"name": "add", "arguments": [1]}</tool_call>', [])),
    ],
)  # fmt: skip
def test_reader_splits_content_and_calls_in_every_format(
    text: str, expected: tuple[str, str, list], step: int
) -> None:
    assert read(text, step=step) == expected


def test_reader_streams_text_and_holds_back_only_a_possible_marker() -> None:
    reader = ToolCallReader(AUTO)

    assert reader.feed("Let me check. <tool") == "Let me check. "
    assert reader.feed("_call>") == ""
    assert reader.feed('{"name": "add", "arguments": {}}</tool_call>') == ""
    rest, [call] = reader.finish()
    assert (rest, call.name, call.arguments) == ("", "add", "{}")
    assert call.id.startswith("call_") and len(call.id) == 29
    assert call.as_openai(3) == {"index": 3, "id": call.id, "type": "function",
                                 "function": {"name": "add", "arguments": "{}"}}  # fmt: skip


def test_one_call_when_parallel_calls_are_off() -> None:
    single = tool_request(TOOLS, "auto", False)
    text = '<tool_call>{"name": "add"}</tool_call><tool_call>{"name": "get_weather"}</tool_call>'

    assert read(text, single) == ("", "", [("add", "{}")])


ADD_CALL = {"type": "object", "properties": {"name": {"const": "add"},
            "arguments": {"type": "object"}}, "required": ["name", "arguments"],
            "additionalProperties": False}  # fmt: skip


def test_a_named_choice_guides_the_reply_to_one_call_of_that_function() -> None:
    named = tool_request(TOOLS, {"type": "function", "function": {"name": "get_weather"}}, None)

    assert reply_opening(named, HERMES) == "<tool_call>\n"
    assert json.loads(reply_guide(named, LLAMA3).spec) == {
        "type": "object",
        "properties": {"name": {"const": "get_weather"}, "parameters": {"type": "object"}},
        "required": ["name", "parameters"],
        "additionalProperties": False,
    }
    # the guided reply after the opening parses into the call
    assert read('{"name": "get_weather", "arguments": {"city": "Paris"}}', named,
                "<tool_call>\n") == ("", "", [("get_weather", '{"city": "Paris"}')])  # fmt: skip


def test_a_required_choice_guides_the_reply_to_any_declared_function() -> None:
    required = tool_request([function("add"), function("sub")], "required", None)
    sub_call = json.loads(json.dumps(ADD_CALL).replace('"add"', '"sub"'))

    assert reply_opening(required, FALLBACK) == "<tool_call>"
    assert json.loads(reply_guide(required, FALLBACK).spec) == {"anyOf": [ADD_CALL, sub_call]}
    single = tool_request([function("add")], "required", False)
    assert json.loads(reply_guide(single, MISTRAL).spec) == {
        "type": "array", "items": ADD_CALL, "minItems": 1, "maxItems": 1}  # fmt: skip
    assert reply_opening(single, MISTRAL) == "[TOOL_CALLS] "
    assert reply_opening(AUTO, HERMES) == "" and reply_guide(AUTO, HERMES) is None
    assert reply_opening(None, HERMES) == "" and reply_guide(None, HERMES) is None
    # a reply cut off inside the call (max_tokens) comes back as content
    assert read('{"name": "add", "argu', required, "<tool_call>") == (
        "", '<tool_call>{"name": "add", "argu', [])  # fmt: skip


BYTES = llguidance.LLTokenizer("byte")  # one token per byte: guides checked without a model


def allows(guide: Guide, text: str) -> bool:
    """Whether `guide` allows the complete reply `text`."""
    matcher = llguidance.LLMatcher(BYTES, guide.grammar, log_level=0)
    return matcher.consume_tokens(BYTES.tokenize_str(text)) and matcher.is_accepting()


STRICT_ADD = function("add", strict=True, parameters={"type": "object", "properties":
                      {"a": {"type": "integer"}}, "required": ["a"]})  # fmt: skip


@pytest.mark.parametrize("fmt", [HERMES, FALLBACK])
def test_strict_tools_guide_auto_replies_to_text_or_calls_matching_their_schema(fmt) -> None:
    guide = reply_guide(tool_request([STRICT_ADD, function("note")], "auto", None), fmt)
    single = reply_guide(tool_request([STRICT_ADD, function("note")], "auto", False), fmt)

    def call(name: str, arguments: str) -> str:
        return f'{fmt.opening}{{"name": "{name}", "arguments": {arguments}}}{fmt.closing}'

    assert guide is not None and guide.kind == "grammar"
    assert allows(guide, "Just text, no <tool call.") and allows(guide, "")
    assert allows(guide, "Sure. " + call("add", '{"a": 2}') + "\n" + call("note", '{"x": [1]}'))
    assert not allows(guide, call("add", '{"b": 2}'))  # strict: arguments per the schema
    assert not allows(guide, call("add", '{"a": 2, "b": 3}'))  # objects are closed
    assert not allows(guide, call("add", '{"a":2}'))  # JSON written compactly, as json.dumps
    assert not allows(guide, call("sub", "{}"))  # only declared functions
    assert not allows(guide, fmt.opening + "not a call")
    assert allows(single, call("add", '{"a": 2}') + " done")
    assert not allows(single, call("add", '{"a": 2}') + call("add", '{"a": 3}'))


def test_strict_llama3_auto_replies_are_a_bare_call_or_text_that_does_not_open_one() -> None:
    guide = reply_guide(tool_request([STRICT_ADD], "auto", None), LLAMA3)

    assert allows(guide, '{"name": "add", "parameters": {"a": 2}}')
    assert allows(guide, "It is 4. {not a call}") and allows(guide, "")
    assert not allows(guide, '{"name": "add", "parameters": {"b": 2}}')
    assert not allows(guide, ' {"x": 1}')


def test_auto_replies_are_free_without_strict_tools_or_in_mistral_format() -> None:
    assert reply_guide(tool_request([function("add", strict=False)], "auto", None), HERMES) is None
    assert reply_guide(tool_request([STRICT_ADD], "auto", None), MISTRAL) is None


def test_tool_choice_none_and_no_tools_mean_no_tool_request() -> None:
    assert tool_request(None, None, None) is None
    assert tool_request(None, "none", None) is None
    assert tool_request(TOOLS, "none", None) is None
    assert ToolRequest(tuple(TOOLS), "auto", True) == AUTO
    assert AUTO.names == {"get_weather", "add"} and AUTO.forced is None


@pytest.mark.parametrize(
    ("tools", "choice", "parallel", "message"),
    [
        ([], None, None, "tools must be a non-empty list of function tools"),
        ({"a": 1}, None, None, "tools must be a non-empty list of function tools"),
        ([{"type": "code_interpreter"}], None, None,
         "tools[0] must be {'type': 'function', 'function': {...}}"),
        ([function("a"), function("a b")], None, None,
         "tools[1].function.name must be 1-64 of a-z A-Z 0-9 _ -, got 'a b'"),
        ([function("a", parameters=[])], None, None,
         "tools[0].function.parameters must be a JSON Schema object"),
        ([function("a", examples=[])], None, None,
         "tools[0].function has unsupported fields ['examples']"),
        ([function("a"), function("a")], None, None,
         "tools: function names must be unique, got ['a', 'a']"),
        (TOOLS, "maybe", None,
         "tool_choice must be one of ['none', 'auto', 'required'] or a function, got 'maybe'"),
        (TOOLS, {"type": "function", "function": {"name": "x"}}, None,
         "tool_choice names function 'x', which is not in tools ['get_weather', 'add']"),
        (TOOLS, {"type": "function"}, None,
         "tool_choice must be a string or {'type': 'function', 'function': {'name': ...}}"),
        (TOOLS, 3, None,
         "tool_choice must be a string or {'type': 'function', 'function': {'name': ...}}"),
        (None, "required", None, "tool_choice needs tools"),
        (TOOLS, None, "yes", "parallel_tool_calls must be a boolean, got 'yes'"),
    ],
)  # fmt: skip
def test_bad_tools_are_rejected_naming_the_field(
    tools: Any, choice: Any, parallel: Any, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        tool_request(tools, choice, parallel)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{% for m in messages %}{{ m.content }}{% endfor %}", None),  # SmolLM2-like: no tools
        ("{% if tools %}<tools>{{ tools | tojson }}</tools>{% endif %}<tool_call>", HERMES),
        ('{% if tools %}Respond as {"name": ..., "parameters": ...}{% endif %}', LLAMA3),
        ("{% if tools %}<|python_tag|>{% endif %}", LLAMA3),
        ("{% if tools %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]", MISTRAL),
        ("{% if tools %}{{ tools }}{% endif %}", HERMES),  # tools, format unknown: parsed anyway
        ({"default": "{{ messages }}", "tool_use": "{{ tools }}<tool_call>"}, HERMES),
        (None, None),
    ],
)
def test_template_format(template: Any, expected: Any) -> None:
    assert template_format(template) == expected


def test_fallback_messages_put_tools_calls_and_results_in_text() -> None:
    assistant = {"role": "assistant", "content": "", "tool_calls": message_calls(
        {"tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "add", "arguments": '{"a": 1}'}}]}, "m")}  # fmt: skip
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Add 1."},
        assistant,
        {"role": "tool", "content": "1", "tool_call_id": "c1"},
        {"role": "tool", "content": "2"},
        {"role": "assistant", "content": "It is 1."},
    ]

    out = fallback_messages(messages, tool_request([function("add")], None, None))

    assert out == [
        {"role": "system", "content": "Be brief.\n\nYou can call these functions (JSON Schema "
         "signatures, one per line):\n"
         '{"type": "function", "function": {"name": "add"}}\n'
         "To call functions, answer with nothing but one line per call:\n"
         '<tool_call>{"name": <function name>, "arguments": <arguments object>}</tool_call>\n'
         "Otherwise answer normally."},
        {"role": "user", "content": "Add 1."},
        {"role": "assistant", "content": '<tool_call>{"name": "add", "arguments": {"a": 1}}'
         "</tool_call>"},
        {"role": "user", "content": "<tool_response>\n1\n</tool_response>\n"
         "<tool_response>\n2\n</tool_response>"},
        {"role": "assistant", "content": "It is 1."},
    ]  # fmt: skip
    assert fallback_messages(messages[1:2], None) == [{"role": "user", "content": "Add 1."}]


@pytest.mark.parametrize(
    ("calls", "message"),
    [
        ("x", "m.tool_calls must be a list"),
        ([{"function": {}}], "m.tool_calls[0] must be {'id', 'type': 'function', 'function': "
         "{'name', 'arguments'}}"),
        ([{"function": {"name": "a", "arguments": "{"}}],
         "m.tool_calls[0].function.arguments must be JSON text"),
        ([{"function": {"name": "a", "arguments": "[1]"}}],
         "m.tool_calls[0].function.arguments must be a JSON object"),
    ],
)  # fmt: skip
def test_bad_message_calls_are_rejected_naming_the_field(calls: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        message_calls({"tool_calls": calls}, "m")
    assert str(info.value) == message
