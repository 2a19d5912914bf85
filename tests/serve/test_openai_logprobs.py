"""`logprobs` on the OpenAI routes with the default model (greedy): each generated token with
its text, bytes and log-probability and the most likely tokens at its position, in OpenAI's
chat and completions shapes, streamed too. Their values are the engine's (tests/engine/
test_logprobs.py checks those against transformers); here they must equal the engine's own
output for the same prompt and be consistent with the reply."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.serve.core import ServeCore

from .helpers import error_of, parse_sse

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MODEL = "SmolLM2-135M-Instruct"
PROMPT = "The capital of France is"


def completion_body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": PROMPT, "max_tokens": 8, "temperature": 0, **extra}


def chat_body(**extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    return {"model": MODEL, "messages": messages, "max_tokens": 8, "temperature": 0, **extra}


async def engine_logprobs(core: ServeCore, prompt: str, k: int) -> list[tuple[int, float]]:
    """(token id, logprob) of each token the engine generates for `prompt`, greedy."""
    params = SamplingParams(temperature=0, max_tokens=8, logprobs=k)
    found = []
    ids = core.tokenizer.encode(prompt, add_special_tokens=False)
    async for out in core.engines[0].generate(ids, params, priority=0, cache_namespace="t"):
        found += [(lp.token_id, lp.logprob) for lp in out.new_logprobs]
    return found


async def test_completion_logprobs(client_a: httpx.AsyncClient, core: ServeCore) -> None:
    response = await client_a.post("/v1/completions", json=completion_body(logprobs=3))

    [choice] = response.json()["choices"]
    logprobs = choice["logprobs"]
    expected = await engine_logprobs(core, PROMPT, 3)
    assert choice["text"] == " Paris.\n\nThe answer is:"
    assert logprobs["tokens"] == [core.tokenizer.decode([t]) for t, _ in expected]
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert logprobs["token_logprobs"] == pytest.approx([p for _, p in expected], abs=1e-5)
    assert logprobs["text_offset"] == [0, 6, 7, 8, 9, 12, 19, 22]
    for token, logprob, top in zip(logprobs["tokens"], logprobs["token_logprobs"],
                                   logprobs["top_logprobs"], strict=True):  # fmt: skip
        assert len(top) == 3 and max(top.values()) == logprob == top[token]  # greedy: the top
    streamed_body = completion_body(logprobs=3, stream=True)
    streamed = await client_a.post("/v1/completions", json=streamed_body)
    chunks = [e["choices"][0]["logprobs"] for e in parse_sse(streamed.text)[:-1]]
    assert [t for c in chunks if c for t in c["tokens"]] == logprobs["tokens"]
    assert [t for c in chunks if c for t in c["text_offset"]] == logprobs["text_offset"]


async def test_chat_logprobs_streamed_and_whole(
    client_a: httpx.AsyncClient, core: ServeCore
) -> None:
    body = chat_body(logprobs=True, top_logprobs=2)
    whole = await client_a.post("/v1/chat/completions", json=body)
    streamed = await client_a.post("/v1/chat/completions", json={**body, "stream": True})

    [choice] = whole.json()["choices"]
    content = choice["logprobs"]["content"]
    tokens = [entry["token"] for entry in content]
    assert "".join(tokens) == choice["message"]["content"] + "<|im_end|>"  # EOS: generated too
    assert choice["finish_reason"] == "stop"
    assert all(len(entry["top_logprobs"]) == 2 for entry in content)
    for entry in content:
        assert entry["bytes"] == list(entry["token"].encode())
        assert entry["top_logprobs"][0]["token"] == entry["token"]  # greedy: the top one
        assert entry["top_logprobs"][0]["logprob"] == entry["logprob"]
        assert entry["top_logprobs"][1]["logprob"] <= entry["logprob"]
    chunks = [e["choices"][0] for e in parse_sse(streamed.text)[:-1]]
    streamed_content = [x for c in chunks if c["logprobs"] for x in c["logprobs"]["content"]]
    assert [e["token"] for e in streamed_content] == tokens
    # the second request reads the prompt's KV from the prefix cache: float noise only
    assert [e["logprob"] for e in streamed_content] == pytest.approx(
        [e["logprob"] for e in content], abs=1e-4)  # fmt: skip


async def test_logprobs_stay_off_unless_asked(client_a: httpx.AsyncClient) -> None:
    chat = await client_a.post("/v1/chat/completions", json=chat_body(logprobs=False))
    completion = await client_a.post("/v1/completions", json=completion_body())

    assert chat.json()["choices"][0]["logprobs"] is None
    assert completion.json()["choices"][0]["logprobs"] is None


async def test_sampled_token_logprobs_are_the_models_not_the_samplers(
    client_a: httpx.AsyncClient,
) -> None:
    """logprobs=0 lists no other tokens; a high temperature changes which tokens are drawn,
    not the distribution they are reported from."""
    body = completion_body(logprobs=0, temperature=1.5, seed=5, max_tokens=16)

    logprobs = (await client_a.post("/v1/completions", json=body)).json()["choices"][0]["logprobs"]

    assert logprobs["top_logprobs"] == [{}] * 16
    assert min(logprobs["token_logprobs"]) < math.log(1e-3)  # drawn from the flattened tail


@pytest.mark.parametrize(
    ("route", "body", "message"),
    [
        ("/v1/chat/completions", chat_body(top_logprobs=2), "top_logprobs needs logprobs: true"),
        ("/v1/chat/completions", chat_body(logprobs=True, top_logprobs=21),
         "top_logprobs must be in [0, 20], got 21"),
        ("/v1/completions", completion_body(logprobs=30),
         "logprobs must be None or an int in [0, 20], got 30"),
    ],
)  # fmt: skip
async def test_bad_logprobs_requests_are_400(
    client_a: httpx.AsyncClient, route: str, body: dict[str, Any], message: str
) -> None:
    response = await client_a.post(route, json=body)

    assert response.status_code == 400
    assert error_of(response)["message"] == message


async def test_logprobs_of_tool_calls_and_of_each_choice(client_a: httpx.AsyncClient) -> None:
    """A reply whose text is held as a possible tool call streams its logprobs when the text
    goes out (here: with the call at the finish); each of `n` choices has its own."""
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    body = chat_body(tools=[weather], tool_choice="required", logprobs=True, max_tokens=24)
    whole = (await client_a.post("/v1/chat/completions", json=body)).json()["choices"][0]
    streamed = await client_a.post("/v1/chat/completions", json={**body, "stream": True})
    several = completion_body(n=2, temperature=1.0, seed=3, logprobs=0)
    choices = (await client_a.post("/v1/completions", json=several)).json()["choices"]

    [call] = whole["message"]["tool_calls"]
    tokens = "".join(e["token"] for e in whole["logprobs"]["content"])
    assert tokens == '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    assert call["function"]["arguments"] == '{"city": "Paris"}'
    chunks = [e["choices"][0] for e in parse_sse(streamed.text)[:-1]]
    sent = [x["token"] for c in chunks if c["logprobs"] for x in c["logprobs"]["content"]]
    assert "".join(sent) == tokens and chunks[-1]["finish_reason"] == "tool_calls"
    for choice in choices:
        assert "".join(choice["logprobs"]["tokens"]) == choice["text"]
    assert choices[0]["text"] != choices[1]["text"]  # seeds 3 and 4
