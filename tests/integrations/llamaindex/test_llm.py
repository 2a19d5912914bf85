"""The Parrotlet LLM: metadata, completion as one chat Call, chat (one user message or a
conversation), real async, argument errors, and an import that leaves torch out."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import httpx
import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole

import parrotlet as P
from llama_index.llms.parrotlet import Parrotlet
from llama_index.llms.parrotlet.graph_mode import graph_llm
from llama_index.llms.parrotlet.openai_routes import openai_messages
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.graph import ir

PROMPT = "What is the capital of France?"
ANSWER = "The capital of France is Paris."


def make_llm(client: P.Client, **fields: object) -> Parrotlet:
    return Parrotlet(client=client, max_tokens=12, **fields)


def test_import_does_not_import_torch():
    code = (
        "import sys, llama_index.llms.parrotlet\n"
        "assert 'llama_index.core' in sys.modules\n"
        "print('torch' in sys.modules)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"


def test_needs_a_server_or_a_client():
    with pytest.raises(ValueError, match="needs base_url"):
        Parrotlet()


@pytest.mark.slow
def test_metadata_comes_from_the_server_unless_set(client: P.Client):
    meta = make_llm(client).metadata
    assert (meta.model_name, meta.context_window, meta.num_output) == (
        "SmolLM2-135M-Instruct",
        8192,
        12,
    )
    assert meta.is_chat_model is False
    meta = make_llm(client, model="mine", context_window=1000).metadata
    assert (meta.model_name, meta.context_window) == ("mine", 1000)


@pytest.mark.slow
def test_complete_is_one_greedy_chat_call(client: P.Client, recording):
    llm = make_llm(client)
    response = llm.complete(PROMPT)
    assert response.text == ANSWER
    assert response.raw == {"finish_reason": "stop", "prompt_tokens": 37, "completion_tokens": 8}
    [graph] = recording.graphs
    sampling = SamplingParams(temperature=0.0, max_tokens=12)
    call = ir.Call("complete-1", (ir.Text(PROMPT), ir.Output("complete-1.text", sampling)))
    assert graph == ir.Graph((), (call,), ())


@pytest.mark.slow
def test_stream_and_single_user_chat_equal_complete(client: P.Client):
    llm = make_llm(client)
    chunks = list(llm.stream_complete(PROMPT))
    assert "".join(c.delta for c in chunks) == ANSWER
    assert chunks[-1].text == ANSWER
    reply = llm.chat([ChatMessage(role=MessageRole.USER, content=PROMPT)])
    assert (reply.message.role, reply.message.content) == (MessageRole.ASSISTANT, ANSWER)


@pytest.mark.slow
def test_conversation_goes_through_the_chat_template(client: P.Client):
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content="Answer in one short sentence."),
        ChatMessage(role=MessageRole.USER, content=PROMPT),
    ]
    rendered = client.core.tokenizer.apply_chat_template(
        [{"role": m.role.value, "content": m.content} for m in messages],
        tokenize=False,
        add_generation_prompt=True,
    )
    with client.session():
        expected = make_raw_completion(rendered).get()
    llm = make_llm(client)
    assert llm.chat(messages).message.content == expected
    assert "".join(r.delta for r in llm.stream_chat(messages)) == expected


@pytest.mark.slow
def test_logprobs_come_with_chat_responses_streamed_too(client: P.Client):
    """As LlamaIndex's OpenAI LLM: per token, its most likely tokens (the chat route's)."""
    llm = make_llm(client, logprobs=True, top_logprobs=2)
    messages = [ChatMessage(role=MessageRole.USER, content=PROMPT)]

    reply = llm.chat(messages)
    streamed = [lp for r in llm.stream_chat(messages) for lp in r.logprobs or []]

    assert reply.message.content == ANSWER  # the same text as without logprobs
    assert [len(top) for top in reply.logprobs] == [2] * len(reply.logprobs)
    assert "".join(top[0].token for top in reply.logprobs) == ANSWER + "<|im_end|>"  # greedy
    assert all(top[0].logprob >= top[1].logprob for top in reply.logprobs)
    assert [top[0].token for top in streamed] == [top[0].token for top in reply.logprobs]
    assert make_llm(client).chat(messages).logprobs is None


def make_raw_completion(prompt: str) -> P.SemanticVariable:
    """`prompt` completed as plain text (chat=False) in the current session, greedy."""

    @P.semantic_function(temperature=0, max_tokens=12, chat=False)
    def raw(text, out):
        """{{input:text}}{{output:out}}"""

    return raw(prompt)


@pytest.mark.slow
@pytest.mark.anyio
async def test_async_methods_await_without_blocking_the_loop(client: P.Client):
    llm = make_llm(client)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    response = await llm.acomplete(PROMPT)
    task.cancel()
    assert response.text == ANSWER
    assert ticks > 5  # the loop kept running while the server generated
    deltas = [r.delta async for r in await llm.astream_complete(PROMPT)]
    assert "".join(deltas) == ANSWER
    reply = await llm.achat([ChatMessage(role=MessageRole.USER, content=PROMPT)])
    assert reply.message.content == ANSWER


def test_remote_metadata_and_conversation_use_the_openai_routes():
    seen = []

    def server(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((request.method, request.url.path, request.headers["authorization"], body))
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m", "max_model_len": 2048}]})
        message = {"role": "assistant", "content": "Paris."}
        return httpx.Response(200, json={"choices": [{"index": 0, "message": message}]})

    with P.Client("http://test", api_key="k", http_transport=httpx.MockTransport(server)) as c:
        llm = Parrotlet(client=c, max_tokens=5, seed=3)
        assert (llm.metadata.model_name, llm.metadata.context_window) == ("m", 2048)
        messages = [
            ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
            ChatMessage(role=MessageRole.USER, content=PROMPT),
        ]
        assert llm.chat(messages).message.content == "Paris."
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": PROMPT},
        ],
        "max_tokens": 5,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": -1,
        "stop": [],
        "seed": 3,
        "stream": False,
    }
    assert seen == [
        ("GET", "/v1/models", "Bearer k", None),
        ("POST", "/v1/chat/completions", "Bearer k", body),
    ]


def test_streaming_and_structured_synthesis_run_llamaindex_per_call():
    llm = Parrotlet(base_url="http://127.0.0.1:9", model="m", context_window=4096)
    assert graph_llm(llm.response_synthesizer("refine")) is llm
    assert graph_llm(llm.response_synthesizer("tree_summarize")) is llm
    assert graph_llm(llm.response_synthesizer("refine", streaming=True)) is None
    structured = llm.response_synthesizer("refine", structured_answer_filtering=True)
    assert graph_llm(structured) is None
    assert type(llm.response_synthesizer("accumulate")).__name__ == "Accumulate"  # as is
    llm.close()


def test_bad_arguments_name_the_field():
    llm = Parrotlet(base_url="http://127.0.0.1:9", model="m", context_window=100)
    with pytest.raises(ValueError, match=r"unsupported keyword arguments \['tools'\]"):
        llm.sampling({"tools": []})
    with pytest.raises(ValueError, match="pass either base_url or client"):
        Parrotlet(base_url="http://127.0.0.1:9", client=llm.client)
    llm.close()
    conversation = [
        ChatMessage(role=MessageRole.USER, content="hi"),
        ChatMessage(role=MessageRole.FUNCTION, content="x"),
    ]
    with pytest.raises(ValueError, match=r"messages\[1\].role 'function' is not one of"):
        openai_messages(conversation)
