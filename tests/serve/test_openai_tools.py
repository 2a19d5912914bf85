"""Tool calling on /v1/chat/completions with the default model. SmolLM2's template has no tools,
so its prompts carry parrotlet's instruction and the Hermes call format; the 135M model does not
call tools on its own, so these tests force calls (tool_choice) and compare every reply with the
same prompt sent to /v1/completions."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest

from parrotlet.serve.core import ServeCore
from parrotlet.serve.openai_api import _chat_prompt
from parrotlet.serve.tool_calls import tool_request

from .helpers import error_of, parse_sse

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MODEL = "SmolLM2-135M-Instruct"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": QUESTION, "max_tokens": 24, "temperature": 0,
            "tools": [WEATHER], **extra}  # fmt: skip


async def completion_of(client: httpx.AsyncClient, prompt: str) -> dict[str, Any]:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 24, "temperature": 0}
    return (await client.post("/v1/completions", json=body)).json()["choices"][0]


def prompt_of(core: ServeCore, body: dict[str, Any]) -> tuple[str, str]:
    tools = tool_request(body["tools"], body.get("tool_choice"), None)
    return _chat_prompt(core.tokenizer, body["messages"], tools)


async def test_a_named_tool_choice_replies_with_a_call_of_that_function(
    client_a: httpx.AsyncClient, core: ServeCore
) -> None:
    body = chat_body(tool_choice=NAMED)
    prompt, opening = prompt_of(core, body)

    response = await client_a.post("/v1/chat/completions", json=body)

    assert opening == '<tool_call>{"name": "get_weather", "arguments": '
    reference = await completion_of(client_a, prompt)  # the same prompt, call opening included
    [choice] = response.json()["choices"]
    [call] = choice["message"].pop("tool_calls")
    assert choice["message"] == {"role": "assistant", "content": None}
    assert call["type"] == "function" and call["id"].startswith("call_")
    # 24 tokens of a 135M model: not valid JSON, so the arguments are its text as written
    assert call["function"] == {"name": "get_weather", "arguments": reference["text"].strip()}
    assert reference["text"].startswith('\n{"type": "function", "description": "The current')
    assert choice["finish_reason"] == reference["finish_reason"] == "length"


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
    assert choices[-1]["finish_reason"] == "length"


async def test_auto_replies_that_call_nothing_are_content(
    client_a: httpx.AsyncClient, core: ServeCore
) -> None:
    prompt, opening = prompt_of(core, chat_body())

    response = await client_a.post("/v1/chat/completions", json=chat_body())
    streamed = await client_a.post("/v1/chat/completions", json=chat_body(stream=True))

    assert opening == ""
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


async def test_a_required_call_of_no_declared_function_is_content(
    client_a: httpx.AsyncClient, core: ServeCore
) -> None:
    body = chat_body(tool_choice="required")
    prompt, opening = prompt_of(core, body)

    response = await client_a.post("/v1/chat/completions", json=body)

    reference = await completion_of(client_a, prompt)
    assert opening == '<tool_call>{"name": "'
    assert reference["text"].startswith('Paris", ')  # not a function of the request
    [choice] = response.json()["choices"]
    assert choice["message"] == {"role": "assistant", "content": opening + reference["text"]}
    assert choice["finish_reason"] == "length"


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
    prompt, _ = prompt_of(core, body)

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

    prompt, opening = _chat_prompt(tokenizer, messages, tool_request([WEATHER], NAMED, None))

    assert prompt == (
        "<tools>get_weather;</tools>[user]What is the weather in Paris?"
        "[assistant]<tool_call>{}</tool_call>[tool]sunny[assistant]"
        '<tool_call>\n{"name": "get_weather", "arguments": '
    )
    assert opening == '<tool_call>\n{"name": "get_weather", "arguments": '


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
