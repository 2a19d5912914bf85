"""Tool calling and structured outputs on the OpenAI routes with the default model. SmolLM2's
template has no tools, so its prompts carry parrotlet's instruction and the Hermes call format;
a required or named tool_choice guides the reply to one valid call, which must equal the same
prompt sent to /v1/completions with the call's JSON Schema as its guide."""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import pytest

from parrotlet.serve.core import ServeCore
from parrotlet.serve.openai_api import _chat_prompt
from parrotlet.serve.tool_calls import reply_guide, reply_opening, tool_request

from .helpers import error_of, parse_sse

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MODEL = "SmolLM2-135M-Instruct"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}  # fmt: skip
ADD = {"type": "function", "function": {"name": "add", "parameters": {"type": "object",
       "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
       "required": ["a", "b"]}}}  # fmt: skip
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": QUESTION, "max_tokens": 24, "temperature": 0,
            "tools": [WEATHER], **extra}  # fmt: skip


async def completion_of(client: httpx.AsyncClient, prompt: str, **extra: Any) -> dict[str, Any]:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 24, "temperature": 0, **extra}
    return (await client.post("/v1/completions", json=body)).json()["choices"][0]


async def reference_call(
    client: httpx.AsyncClient, core: ServeCore, body: dict[str, Any]
) -> tuple[str, str]:
    """(name, arguments) of the call that the chat prompt, sent to /v1/completions with the
    call's schema as its guide, makes."""
    tools = tool_request(body["tools"], body.get("tool_choice"), None)
    prompt, fmt = _chat_prompt(core.tokenizer, body["messages"], tools)
    schema = json.loads(reply_guide(tools, fmt).spec)
    choice = await completion_of(client, prompt + reply_opening(tools, fmt),
                                 structured_outputs={"json": schema})  # fmt: skip
    assert choice["finish_reason"] == "stop"
    call = json.loads(choice["text"])
    return call["name"], json.dumps(call["arguments"])


def prompt_of(core: ServeCore, body: dict[str, Any]) -> str:
    tools = tool_request(body["tools"], body.get("tool_choice"), None)
    return _chat_prompt(core.tokenizer, body["messages"], tools)[0]


@pytest.mark.parametrize(
    ("question", "tools", "choice", "expected"),
    [
        ("What is 2 plus 3?", [WEATHER, ADD], {"type": "function", "function": {"name": "add"}},
         ("add", '{"a": 2, "b": 3}')),
        ("What is the weather in Paris?", [ADD, WEATHER], "required",
         ("get_weather", '{"city": "Paris"}')),
    ],
)  # fmt: skip
async def test_a_required_call_is_one_valid_call(
    client_a: httpx.AsyncClient,
    core: ServeCore,
    question: str,
    tools: list,
    choice: Any,
    expected: tuple[str, str],
) -> None:
    body = chat_body(messages=[{"role": "user", "content": question}], tools=tools,
                     tool_choice=choice)  # fmt: skip

    response = await client_a.post("/v1/chat/completions", json=body)

    [out] = response.json()["choices"]
    [call] = out["message"].pop("tool_calls")
    assert out["message"] == {"role": "assistant", "content": None}
    assert out["finish_reason"] == "tool_calls"
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert (call["function"]["name"], call["function"]["arguments"]) == expected
    assert await reference_call(client_a, core, body) == expected


async def test_a_streamed_call_comes_whole_with_the_finish(client_a: httpx.AsyncClient) -> None:
    whole = (await client_a.post("/v1/chat/completions", json=chat_body(tool_choice=NAMED))).json()

    response = await client_a.post("/v1/chat/completions", json=chat_body(tool_choice=NAMED,
                                                                          stream=True))  # fmt: skip

    events = parse_sse(response.text)
    assert events[-1] == "[DONE]"
    choices = [e["choices"][0] for e in events[:-1]]
    assert [c["delta"] for c in choices[:-1]] == [{"role": "assistant", "content": ""}]
    [call] = choices[-1]["delta"]["tool_calls"]
    [expected] = whole["choices"][0]["message"]["tool_calls"]
    assert call.pop("index") == 0 and call.pop("id").startswith("call_")
    assert call == {"type": "function", "function": expected["function"]}
    assert expected["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert choices[-1]["finish_reason"] == "tool_calls"


async def test_auto_replies_that_call_nothing_are_content(
    client_a: httpx.AsyncClient, core: ServeCore
) -> None:
    prompt = prompt_of(core, chat_body())

    response = await client_a.post("/v1/chat/completions", json=chat_body())
    streamed = await client_a.post("/v1/chat/completions", json=chat_body(stream=True))

    reference = await completion_of(client_a, prompt)
    assert response.json()["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "The weather in Paris is Paris, France."},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert reference["text"] == "The weather in Paris is Paris, France."
    deltas = [e["choices"][0]["delta"] for e in parse_sse(streamed.text)[:-1]]
    assert "".join(d.get("content", "") for d in deltas) == reference["text"]


async def test_earlier_calls_and_results_render_into_the_prompt(
    client_a: httpx.AsyncClient, core: ServeCore
) -> None:
    messages = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type":
         "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    ]  # fmt: skip
    body = chat_body(messages=messages)
    prompt = prompt_of(core, body)

    response = await client_a.post("/v1/chat/completions", json=body)

    assert prompt.endswith(
        "<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>{"name": "get_weather", "arguments": '
        '{"city": "Paris"}}</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n18 C, sunny\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert prompt.startswith("<|im_start|>system\nYou can call these functions")
    reference = await completion_of(client_a, prompt)
    assert response.json()["choices"][0]["message"] == {"role": "assistant",
                                                        "content": reference["text"]}  # fmt: skip
    assert reference["text"] == "<tool_response>\n18 C, sunny\n</tool_response>"  # an echo


def test_a_template_with_tools_renders_them_itself(core: ServeCore) -> None:
    tokenizer = copy.deepcopy(core.tokenizer)
    tokenizer.chat_template = (
        "{% if tools %}<tools>{% for t in tools %}{{ t.function.name }};{% endfor %}</tools>"
        "{% endif %}{% for m in messages %}[{{ m.role }}]{{ m.content }}"
        "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function.arguments | tojson }}"
        "</tool_call>{% endfor %}{% endfor %}[assistant]"
    )
    messages = [*QUESTION, {"role": "assistant", "content": None, "tool_calls": [{"id": "c",
                "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
                {"role": "tool", "content": "sunny"}]  # fmt: skip

    prompt, fmt = _chat_prompt(tokenizer, messages, tool_request([WEATHER], NAMED, None))

    assert prompt == (
        "<tools>get_weather;</tools>[user]What is the weather in Paris?"
        "[assistant]<tool_call>{}</tool_call>[tool]sunny[assistant]"
    )
    assert fmt.opening == "<tool_call>\n"  # the Hermes format: the template has <tool_call>


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]},
         "tools[0].function.name must be 1-64 of a-z A-Z 0-9 _ -, got 'a b'"),
        ({"tool_choice": "always"},
         "tool_choice must be one of ['none', 'auto', 'required'] or a function, got 'always'"),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "1",
          "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
         "messages[0].tool_calls[0].function.arguments must be JSON text"),
        ({"messages": [{"role": "tool", "content": "x", "tool_calls": []}]},
         "messages[0] has unsupported fields ['tool_calls']"),
        ({"tool_choice": "required", "response_format": {"type": "json_object"}},
         "guided tool calls (tool_choice 'required' or a function, or strict tools) and "
         "response_format / structured_outputs both constrain the reply"),
        ({"tools": [{"type": "function", "function": {"name": "f", "strict": True}}],
          "structured_outputs": {"regex": "[a-z]+"}},
         "guided tool calls (tool_choice 'required' or a function, or strict tools) and "
         "response_format / structured_outputs both constrain the reply"),
        ({"tools": None, "structured_outputs": {"regex": "(ab"}},
         'the regex guide does not compile: at 1(8): invalid regex "(ab" (in regex): regex '
         "parse error:\n    (ab\n    ^\nerror: unclosed group\n   1 | start: /(ab/\n"
         "              ^\n"),
    ],
)  # fmt: skip
async def test_bad_tool_requests_are_400_and_the_server_goes_on(
    client_a: httpx.AsyncClient, extra: dict[str, Any], message: str
) -> None:
    response = await client_a.post("/v1/chat/completions", json=chat_body(**extra))

    assert response.status_code == 400
    assert error_of(response)["message"] == message
    after = await client_a.post("/v1/chat/completions", json=chat_body(max_tokens=4))
    assert after.status_code == 200


CITY = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type":
        "string"}}, "required": ["city", "country"], "additionalProperties": False}  # fmt: skip


@pytest.mark.parametrize(
    ("route", "extra", "text"),
    [
        ("/v1/chat/completions", {"response_format": {"type": "json_schema", "json_schema":
         {"name": "city", "schema": CITY}}},
         '{"city": "Santorama", "country": "Santorama"}'),
        ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "{}"),
        ("/v1/chat/completions", {"structured_outputs": {"choice": ["yes", "no"]}}, "no"),
        ("/v1/completions", {"structured_outputs": {"regex": "[0-9]{4}"}}, "1989"),
    ],
)  # fmt: skip
async def test_structured_outputs_match_their_constraint(
    client_a: httpx.AsyncClient, route: str, extra: dict[str, Any], text: str
) -> None:
    body = {"model": MODEL, "max_tokens": 40, "temperature": 0, **extra}
    if route == "/v1/completions":
        body["prompt"] = "The year the Eiffel Tower was finished:"
    else:
        body["messages"] = [{"role": "user", "content": "Name a city and its country."}]

    response = await client_a.post(route, json=body)

    [choice] = response.json()["choices"]
    out = choice["message"]["content"] if "message" in choice else choice["text"]
    assert (out, choice["finish_reason"]) == (text, "stop")


async def test_each_choice_of_n_has_its_call(client_a: httpx.AsyncClient) -> None:
    body = chat_body(tool_choice=NAMED, n=2)

    whole = (await client_a.post("/v1/chat/completions", json=body)).json()
    events = parse_sse((await client_a.post("/v1/chat/completions",
                                            json={**body, "stream": True})).text)  # fmt: skip

    functions = [c["message"]["tool_calls"][0]["function"] for c in whole["choices"]]
    assert functions == [{"name": "get_weather", "arguments": '{"city": "Paris"}'}] * 2
    streamed = {
        e["choices"][0]["index"]: e["choices"][0]["delta"]["tool_calls"][0]["function"]
        for e in events[:-1]
        if "tool_calls" in e["choices"][0]["delta"]
    }
    assert streamed == {0: functions[0], 1: functions[1]}


@pytest.mark.parametrize(("strict", "arguments"), [(False, '{"town": "Oslo"}'),
                                                  (True, '{"city": "Oslo"}')])  # fmt: skip
async def test_strict_tools_guide_an_auto_reply_to_calls_that_match_their_schema(
    client_a: httpx.AsyncClient, core: ServeCore, strict: bool, arguments: str
) -> None:
    weather = {"type": "function", "function": {**WEATHER["function"], "strict": strict}}
    earlier_call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"town": "Rome"}'},
    }  # not per the schema: the model copies it
    messages = [{"role": "user", "content": "Weather in Rome?"},
                {"role": "assistant", "content": None, "tool_calls": [earlier_call]},
                {"role": "user", "content": "Weather in Oslo?"}]  # fmt: skip
    body = chat_body(tools=[ADD, weather], messages=messages, max_tokens=40)

    response = await client_a.post("/v1/chat/completions", json=body)

    [call] = response.json()["choices"][0]["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": arguments}
    if strict:  # the reply is the chat prompt's completion under auto_guide's grammar
        tools = tool_request(body["tools"], None, None)
        prompt, fmt = _chat_prompt(core.tokenizer, messages, tools)
        grammar = {"grammar": reply_guide(tools, fmt).spec}
        reference = await completion_of(client_a, prompt, max_tokens=40,
                                        structured_outputs=grammar)  # fmt: skip
        assert reference["text"] == '<tool_call>{"name": "get_weather", "arguments": ' \
                                    '{"city": "Oslo"}}</tool_call>'  # fmt: skip
