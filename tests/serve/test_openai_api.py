"""OpenAI-compatible endpoints: plain OpenAI JSON in, OpenAI-shaped bodies and SSE chunks out."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from parrotlet.serve.core import ServeCore

from .helpers import error_of, parse_sse

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MODEL = "SmolLM2-135M-Instruct"
PROMPT = "The capital of France is"
PROMPT_TEXT = " Paris.\n\nThe answer is:"  # greedy, 8 tokens
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
CHAT_TEXT = "The capital of France is Paris."


def completion_body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": PROMPT, "max_tokens": 8, "temperature": 0, **extra}


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": MESSAGES, "max_tokens": 8, "temperature": 0, **extra}


def check_envelope(body: dict[str, Any], obj: str, prefix: str) -> None:
    assert body["id"].startswith(prefix) and len(body["id"]) == len(prefix) + 32
    assert body["object"] == obj
    assert abs(body["created"] - time.time()) < 60
    assert body["model"] == MODEL


async def test_completion(client_a: httpx.AsyncClient) -> None:
    response = await client_a.post("/v1/completions", json=completion_body())

    assert response.status_code == 200
    body = response.json()
    check_envelope(body, "text_completion", "cmpl-")
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert body["choices"] == [
        {"index": 0, "text": PROMPT_TEXT, "logprobs": None, "finish_reason": "length"}
    ]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}


async def test_streamed_completion_concatenates_to_the_same_text(
    client_a: httpx.AsyncClient,
) -> None:
    response = await client_a.post("/v1/completions", json=completion_body(stream=True))

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = parse_sse(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1
    for chunk in chunks:
        check_envelope(chunk, "text_completion", "cmpl-")
        assert set(chunk) == {"id", "object", "created", "model", "choices"}
        [choice] = chunk["choices"]
        assert set(choice) == {"index", "text", "logprobs", "finish_reason"}
    assert "".join(c["choices"][0]["text"] for c in chunks) == PROMPT_TEXT
    assert [c["choices"][0]["finish_reason"] for c in chunks][-2:] == [None, "length"]


async def test_stream_options_include_usage_adds_a_usage_chunk(
    client_a: httpx.AsyncClient,
) -> None:
    body = completion_body(stream=True, stream_options={"include_usage": True})

    events = parse_sse((await client_a.post("/v1/completions", json=body)).text)

    assert all(e["usage"] is None for e in events[:-2])
    assert events[-2]["choices"] == []
    assert events[-2]["usage"] == {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}


async def test_token_id_prompt_and_omitted_model(
    client_a: httpx.AsyncClient, core: ServeCore
) -> None:
    ids = core.tokenizer.encode(PROMPT, add_special_tokens=False)
    body = {"prompt": ids, "max_tokens": 8, "temperature": 0}

    response = await client_a.post("/v1/completions", json=body)

    assert response.status_code == 200
    assert response.json()["choices"][0]["text"] == PROMPT_TEXT
    assert response.json()["usage"]["prompt_tokens"] == len(ids) == 5


async def test_batch_prompts_give_one_choice_each(client_a: httpx.AsyncClient) -> None:
    body = completion_body(prompt=[PROMPT, "Water is made of"])

    single = await client_a.post("/v1/completions", json=completion_body(prompt=body["prompt"][1]))
    batch = await client_a.post("/v1/completions", json=body)
    streamed = parse_sse(
        (await client_a.post("/v1/completions", json={**body, "stream": True})).text
    )

    other = single.json()["choices"][0]["text"]
    assert [(c["index"], c["text"]) for c in batch.json()["choices"]] == [
        (0, PROMPT_TEXT),
        (1, other),
    ]
    assert batch.json()["usage"]["completion_tokens"] == 16
    texts = ["", ""]
    for chunk in streamed[:-1]:
        [choice] = chunk["choices"]
        texts[choice["index"]] += choice["text"]
    assert texts == [PROMPT_TEXT, other]


async def test_n_choices_of_a_prompt(client_a: httpx.AsyncClient) -> None:
    """Choice j of a seeded request samples as the single request with seed + j; usage counts
    the prompt once."""
    sampled = completion_body(n=3, temperature=1.0, seed=7)

    greedy = (await client_a.post("/v1/completions", json=completion_body(n=2))).json()
    choices = (await client_a.post("/v1/completions", json=sampled)).json()
    singles = [
        (await client_a.post("/v1/completions", json={**sampled, "n": 1, "seed": 7 + j})).json()
        for j in range(3)
    ]
    streamed = parse_sse((await client_a.post("/v1/completions",
                                              json={**sampled, "stream": True})).text)  # fmt: skip

    assert [c["text"] for c in greedy["choices"]] == [PROMPT_TEXT, PROMPT_TEXT]
    assert greedy["usage"] == {"prompt_tokens": 5, "completion_tokens": 16, "total_tokens": 21}
    texts = [c["text"] for c in choices["choices"]]
    assert [c["index"] for c in choices["choices"]] == [0, 1, 2]
    assert texts == [s["choices"][0]["text"] for s in singles]
    assert len(set(texts)) == 3  # three seeds, three samples
    by_index = ["", "", ""]
    for chunk in streamed[:-1]:
        [choice] = chunk["choices"]
        by_index[choice["index"]] += choice["text"]
    assert by_index == texts


async def test_penalties_reach_the_sampler(client_a: httpx.AsyncClient) -> None:
    """Greedy " Paris.\n\nThe answer is:" repeats prompt words; a repetition penalty (vLLM's
    extension) and OpenAI's frequency penalty change the text (their values are checked
    against transformers in tests/engine/test_penalties.py)."""
    texts = []
    for penalties in ({}, {"repetition_penalty": 1.5}, {"frequency_penalty": 2.0}):
        body = completion_body(max_tokens=12, **penalties)
        texts.append((await client_a.post("/v1/completions", json=body)).json())

    plain, repetition, frequency = (t["choices"][0]["text"] for t in texts)
    assert plain.startswith(PROMPT_TEXT)
    assert repetition != plain and frequency != plain


async def test_chat_completion(client_a: httpx.AsyncClient, core: ServeCore) -> None:
    response = await client_a.post("/v1/chat/completions", json=chat_body())

    assert response.status_code == 200
    body = response.json()
    check_envelope(body, "chat.completion", "chatcmpl-")
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": CHAT_TEXT},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    text = core.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    prompt_tokens = len(core.tokenizer.encode(text, add_special_tokens=False))
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 8,  # 7 text tokens + the end-of-turn token
        "total_tokens": prompt_tokens + 8,
    }


async def test_streamed_chat_concatenates_to_the_same_message(
    client_a: httpx.AsyncClient,
) -> None:
    response = await client_a.post("/v1/chat/completions", json=chat_body(stream=True))

    events = parse_sse(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for chunk in chunks:
        check_envelope(chunk, "chat.completion.chunk", "chatcmpl-")
        assert set(chunk["choices"][0]) == {"index", "delta", "logprobs", "finish_reason"}
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[-1] == {}
    assert "".join(d["content"] for d in deltas[:-1]) == CHAT_TEXT
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_chat_max_completion_tokens_and_text_parts(client_a: httpx.AsyncClient) -> None:
    messages = [
        {"role": "developer", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]},
    ]
    body = chat_body(messages=messages, max_completion_tokens=3)
    del body["max_tokens"]

    response = await client_a.post("/v1/chat/completions", json=body)

    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 3
    assert response.json()["choices"][0]["finish_reason"] == "length"


async def test_chat_without_max_tokens_runs_to_the_end_of_turn(
    client_a: httpx.AsyncClient,
) -> None:
    body = chat_body()
    del body["max_tokens"]

    response = await client_a.post("/v1/chat/completions", json=body)

    assert response.json()["choices"][0]["message"]["content"] == CHAT_TEXT
    assert response.json()["choices"][0]["finish_reason"] == "stop"


async def test_chat_max_tokens_past_the_context_is_400(client_a: httpx.AsyncClient) -> None:
    """Without max_tokens a chat may run up to the context instead (the end-of-turn test)."""
    messages = [{"role": "user", "content": "hello " * 8155}]  # 8186 tokens in the template

    response = await client_a.post("/v1/chat/completions", json=chat_body(messages=messages))

    assert response.status_code == 400
    assert error_of(response)["message"] == (
        "max_tokens is 8 but the prompt has 8186 tokens and the model's context is 8192: "
        "at most 6 fit"
    )


async def test_models(client_a: httpx.AsyncClient, core: ServeCore) -> None:
    response = await client_a.get("/v1/models")

    assert response.status_code == 200
    [card] = response.json()["data"]
    assert response.json()["object"] == "list"
    assert card["id"] == MODEL == core.model_name
    assert (card["object"], card["owned_by"], card["max_model_len"]) == ("model", "parrotlet", 8192)
    assert isinstance(card["created"], int)


async def test_unknown_model_is_404_model_not_found(client_a: httpx.AsyncClient) -> None:
    for path, body in [("completions", completion_body()), ("chat/completions", chat_body())]:
        response = await client_a.post(f"/v1/{path}", json={**body, "model": "gpt-4o"})

        assert response.status_code == 404
        assert error_of(response) == {
            "message": "The model `gpt-4o` does not exist",
            "type": "not_found_error",
            "param": None,
            "code": "model_not_found",
        }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (completion_body(n=17), "n must be in [1, 16] (choices per prompt), got 17"),
        (completion_body(temperature=-1), "temperature must be a finite number >= 0, got -1.0"),
        (completion_body(top_p=0), "top_p must be in (0, 1], got 0.0"),
        (completion_body(max_tokens=-1), "max_tokens must be an int >= 0, got -1"),
        (completion_body(stop=[""]), "stop must contain non-empty strings, got ''"),
        (completion_body(stop=["x"] * 17), "stop has 17 strings, at most 16"),
        (completion_body(stop=3), "stop must be a str or a list of str, got 3"),
        (completion_body(top_k=-2), "top_k must be an int >= -1 (-1 or 0: off), got -2"),
        (completion_body(presence_penalty=2.5), "presence_penalty must be in [-2, 2], got 2.5"),
        (completion_body(frequency_penalty=-3.0), "frequency_penalty must be in [-2, 2], got "
         "-3.0"),
        (completion_body(repetition_penalty=0.0), "repetition_penalty must be a finite number "
         "> 0, got 0.0"),
        (completion_body(logit_bias={"x": 1.0}), "logit_bias keys must be token ids, got 'x'"),
        (completion_body(logit_bias={"5": 101.0}), "logit_bias values must be in [-100, 100], "
         "got 101.0"),
        (completion_body(logit_bias={"49152": 1.0}), "logit_bias has token ids outside "
         "[0, 49152): [49152]"),
        (completion_body(temperatur=0), "temperatur: Extra inputs are not permitted"),
        (completion_body(max_tokens="8"), "max_tokens: Input should be a valid integer"),
        (completion_body(prompt=""), "prompt must not be empty"),
        (completion_body(prompt=[]), "prompt must be a string, a list of token ids, or a list of "
         "those"),
        (completion_body(prompt=["ok", 3]), "prompt[1] must be a string or a list of token ids"),
        (completion_body(prompt=[1, 10**9]), "prompt has token ids outside [0, 49152): "
         "[1000000000]"),
        (completion_body(prompt="hello " * 9000), "the prompt has 9001 tokens, the model's "
         "context is 8192"),
        (completion_body(prompt=[1] * 8192), "the prompt has 8192 tokens, the model's context "
         "is 8192"),
        (completion_body(prompt="x" * 1_000_001), "variable 'prompt' has 1000001 chars, the "
         "limit is 1000000"),
        (completion_body(prompt="hello " * 8000, max_tokens=200), "max_tokens is 200 but the "
         "prompt has 8001 tokens and the model's context is 8192: at most 191 fit"),
    ],
)  # fmt: skip
async def test_bad_completion_request_is_400(
    client_a: httpx.AsyncClient, body: dict[str, Any], message: str
) -> None:
    response = await client_a.post("/v1/completions", json=body)

    assert response.status_code == 400
    assert error_of(response) == {
        "message": message,
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "messages must be a non-empty list"),
        ("hi", "messages: Input should be a valid list"),
        (["hi"], "messages[0] must be an object with 'role' and 'content'"),
        ([{"role": "robot", "content": "hi"}], "messages[0].role must be one of ['system', "
         "'developer', 'user', 'assistant', 'tool'], got 'robot'"),
        ([MESSAGES[0], {"role": "user"}], "messages[1].content must be a string or a list of "
         "text parts"),
        ([{"role": "user", "content": "hi", "tool_calls": []}], "messages[0] has unsupported "
         "fields ['tool_calls']"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "messages[0].content[0] must be "
         "{'type': 'text', 'text': str} (text only)"),
    ],
)  # fmt: skip
async def test_bad_chat_messages_are_400_naming_the_field(
    client_a: httpx.AsyncClient, messages: Any, message: str
) -> None:
    response = await client_a.post("/v1/chat/completions", json=chat_body(messages=messages))

    assert response.status_code == 400
    assert error_of(response)["message"] == message


async def test_streamed_request_that_fails_validation_gets_a_status_not_a_stream(
    client_a: httpx.AsyncClient,
) -> None:
    body = completion_body(prompt="hello " * 9000, stream=True)

    response = await client_a.post("/v1/completions", json=body)

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert "context is 8192" in error_of(response)["message"]
    after = await client_a.post("/v1/completions", json=completion_body())
    assert after.json()["choices"][0]["text"] == PROMPT_TEXT


async def test_logit_bias_steers_the_reply(client_a: httpx.AsyncClient, core: ServeCore) -> None:
    [rome] = core.tokenizer.encode(" Rome", add_special_tokens=False)
    body = completion_body(max_tokens=3, logit_bias={str(rome): 100})
    chat = chat_body(max_tokens=3, logit_bias={str(rome): 100})

    completion = (await client_a.post("/v1/completions", json=body)).json()
    reply = (await client_a.post("/v1/chat/completions", json=chat)).json()

    assert completion["choices"][0]["text"] == " Rome Rome Rome"
    assert reply["choices"][0]["message"]["content"] == " Rome Rome Rome"


async def test_min_tokens_holds_off_stop_strings(client_a: httpx.AsyncClient) -> None:
    """vLLM's min_tokens: a stop string inside the first min_tokens tokens does not stop."""
    stopped = await client_a.post("/v1/completions", json=completion_body(stop=["."]))
    held = await client_a.post("/v1/completions", json=completion_body(stop=["."], min_tokens=4))
    bad = await client_a.post("/v1/completions", json=completion_body(min_tokens=9))

    assert stopped.json()["choices"][0]["text"] == " Paris"
    assert held.json()["choices"][0]["text"] == PROMPT_TEXT  # no "." after the fourth token
    assert held.json()["choices"][0]["finish_reason"] == "length"
    assert bad.status_code == 400
    assert error_of(bad)["message"] == "min_tokens must be an int in [0, max_tokens=8], got 9"
