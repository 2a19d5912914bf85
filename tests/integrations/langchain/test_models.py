"""ParrotletLLM and ChatParrotlet on the real default model (greedy): invoke is one request, batch
one graph, streams concatenate to invokes, stop strings, usage, callbacks, async, errors, and a
remote server over a real socket with an API key."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.globals import set_llm_cache
from langchain_core.load import dumps
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

import parrotlet as P
from langchain_parrotlet import ChatParrotlet, ParrotletLLM, SemanticText, parrotlet_graph

from .conftest import Requests

pytestmark = pytest.mark.slow
PROMPTS = ["What do cats like?", "Describe the sea."]
KEY = "test-key-langchain"  # made up for these tests
ONE_GRAPH = {"create_session": 1, "submit": 1, "get": 2, "delete_session": 1}


def make_llm(client: P.Client, **fields: Any) -> ParrotletLLM:
    return ParrotletLLM(**{"client": client, "temperature": 0, "max_tokens": 6, **fields})


def make_chat(client: P.Client, **fields: Any) -> ChatParrotlet:
    return ChatParrotlet(**{"client": client, "temperature": 0, "max_tokens": 6, **fields})


@pytest.fixture(scope="module")
def replies(client: P.Client) -> list[AIMessage]:
    """ChatParrotlet.invoke of each prompt: one /v1/chat/completions request each."""
    requests = Requests(client)
    messages = [make_chat(client).invoke(p) for p in PROMPTS]
    assert requests.delta() == {"complete": 2}
    return messages


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_llm_start(self, serialized: Any, prompts: Any, **kwargs: Any) -> None:
        self.events.append("start")

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self.events.append("start")

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.events.append("token")

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.events.append("end")


def test_llm_invoke_is_one_request_and_batch_one_graph(client: P.Client) -> None:
    recorder = Recorder()
    llm = make_llm(client, callbacks=[recorder])
    requests = Requests(client)
    single = [llm.invoke(p) for p in PROMPTS]
    assert requests.delta() == {"complete": 2}
    requests = Requests(client)
    assert llm.batch(PROMPTS) == single
    assert requests.delta() == ONE_GRAPH
    assert recorder.events == ["start", "end"] * 2 + ["start"] * 2 + ["end"] * 2


def test_chat_batch_is_one_graph_with_the_same_template(
    client: P.Client, replies: list[AIMessage]
) -> None:
    requests = Requests(client)
    batched = make_chat(client).batch(PROMPTS)
    assert requests.delta() == ONE_GRAPH
    assert [m.content for m in batched] == [m.content for m in replies]
    assert [m.usage_metadata for m in batched] == [m.usage_metadata for m in replies]
    assert replies[0].usage_metadata == {"input_tokens": 35, "output_tokens": 6, "total_tokens": 41}
    assert replies[0].response_metadata["finish_reason"] == "length"


def test_several_messages_are_a_chat_request_or_one_graph_call(client: P.Client) -> None:
    chat = make_chat(client)
    prompt = [SystemMessage("You only answer with numbers."), HumanMessage("How many legs?")]
    requests = Requests(client)
    reply = chat.invoke(prompt)
    assert requests.delta() == {"complete": 1}
    assert reply.content == "The answer is 2."
    requests = Requests(client)
    with parrotlet_graph(chat):
        content = chat.invoke(prompt).content
        assert isinstance(content, SemanticText)  # a graph call with Role segments
        assert content == reply.content
    assert requests.delta() == {"create_session": 1, "submit": 1, "get": 1, "delete_session": 1}


def test_a_cached_model_runs_eagerly_in_a_graph_scope_and_caches_real_text(
    client: P.Client,
) -> None:
    """A cached future's characters are a reference: persisted, they would name another call."""
    eager = make_llm(client).invoke(PROMPTS[0])
    cache = InMemoryCache()
    cached = make_llm(client, cache=cache)
    with (
        pytest.warns(UserWarning, match="ParrotletLLM runs its calls eagerly inside parrotlet_g"),
        parrotlet_graph(cached),
    ):
        out = cached.invoke(PROMPTS[0])
        kept = make_llm(client, cache=False).invoke(PROMPTS[1])  # uncached: stays in the graph
        assert type(out) is str and isinstance(kept, SemanticText)
    assert out == eager
    ((generation,),) = cache._cache.values()
    assert '"text": ' + dumps(eager) in dumps(generation)


def test_a_global_cache_keeps_a_chat_batch_out_of_a_graph(
    client: P.Client, replies: list[AIMessage]
) -> None:
    cache = InMemoryCache()
    set_llm_cache(cache)
    try:
        batched = make_chat(client).batch(PROMPTS)
    finally:
        set_llm_cache(None)
    assert [type(m.content) for m in batched] == [str, str]
    assert [m.content for m in batched] == [m.content for m in replies]
    stored = sorted(g.message.content for (g,) in cache._cache.values())
    assert stored == sorted(m.content for m in replies)
    assert all(type(text) is str for text in stored)


def test_streams_concatenate_to_invokes(client: P.Client, replies: list[AIMessage]) -> None:
    recorder = Recorder()
    chat = make_chat(client, callbacks=[recorder])
    pieces = list(chat.stream(PROMPTS[0]))
    assert len(pieces) > 1 and "".join(p.content for p in pieces) == replies[0].content
    assert pieces[-1].usage_metadata == replies[0].usage_metadata
    assert recorder.events == ["start"] + ["token"] * len(pieces) + ["end"]  # one per chunk
    with parrotlet_graph(chat):  # the stream of a graph output
        assert "".join(p.content for p in chat.stream(PROMPTS[1])) == replies[1].content
    llm = make_llm(client, chat=True)
    assert "".join(llm.stream(PROMPTS[0])) == replies[0].content
    assert make_llm(client, chat=True, streaming=True).invoke(PROMPTS[1]) == replies[1].content


def test_stop_strings_cut_before_the_stop(client: P.Client, replies: list[AIMessage]) -> None:
    full = replies[0].content
    stop = full.split()[2]
    cut = full[: full.index(stop)]
    chat = make_chat(client)
    assert chat.invoke(PROMPTS[0], stop=[stop]).content == cut
    assert chat.batch(PROMPTS, stop=[stop])[0].content == cut
    assert make_chat(client, stop=[stop]).invoke(PROMPTS[0]).content == cut


@pytest.mark.anyio
async def test_async_paths_match_sync(client: P.Client, replies: list[AIMessage]) -> None:
    chat = make_chat(client)
    assert (await chat.ainvoke(PROMPTS[0])).content == replies[0].content
    requests = Requests(client)
    batched = await chat.abatch(PROMPTS)
    assert requests.delta() == ONE_GRAPH
    assert [m.content for m in batched] == [m.content for m in replies]
    llm = make_llm(client, chat=True)
    assert await llm.abatch(PROMPTS) == [m.content for m in replies]
    assert "".join([c async for c in llm.astream(PROMPTS[1])]) == replies[1].content
    async with parrotlet_graph(llm):
        future = await llm.ainvoke(PROMPTS[1])
        assert await future.aresolve() == replies[1].content


def test_server_errors_keep_their_type(client: P.Client) -> None:
    with pytest.raises(P.NotFoundError, match="The model `nope` does not exist"):
        make_chat(client, model="nope").invoke("hi")
    with pytest.raises(P.GraphError, match="the model's context is"):
        make_llm(client).batch(["word " * 9000, "short"])


# ---- a remote `parrotlet serve` over a real socket ----------------------------------------
@pytest.fixture(scope="module")
def server_url(client: P.Client) -> Iterator[str]:
    """The in-process core served by uvicorn on the client's own loop, with an API key."""
    import uvicorn

    from parrotlet.serve.app import create_app
    from parrotlet.serve.auth import ApiKeys

    assert client.core is not None
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app(client.core, ApiKeys([KEY]))
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    running = client.session().portal.submit(server.serve(sockets=[sock]))
    while not server.started:
        assert not running.done(), running.exception()
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    running.result(timeout=10)


def test_remote_server_matches_in_process(
    client: P.Client, server_url: str, replies: list[AIMessage]
) -> None:
    remote = ChatParrotlet(base_url=server_url, api_key=KEY, temperature=0, max_tokens=6)
    assert remote.invoke(PROMPTS[0]).content == replies[0].content
    requests = Requests(client)
    with parrotlet_graph(remote):
        first = remote.invoke(PROMPTS[1])
        second = remote.invoke("Repeat this:\n" + first.content)  # `+` keeps the reference
        text = str(second.content)
    assert requests.delta() == {"create_session": 1, "submit": 1, "get": 2, "delete_session": 1}
    assert first.content == replies[1].content
    assert text == make_chat(client).invoke("Repeat this:\n" + replies[1].content).content
    with pytest.raises(P.AuthError, match="invalid API key"):
        ChatParrotlet(base_url=server_url, api_key="wrong-key").invoke("hi")


def test_penalties_apply_on_both_routes(client: P.Client) -> None:
    """A repetition penalty set on the model reaches the sampler as one request and as a graph
    call (the graph's sampling carries it), and changes the greedy text."""
    plain = make_chat(client, max_tokens=12).invoke(PROMPTS[1])
    penalized = make_chat(client, max_tokens=12, repetition_penalty=1.5)

    eager = penalized.invoke(PROMPTS[1])
    with parrotlet_graph(penalized):
        graph = str(penalized.invoke(PROMPTS[1]).content)

    assert graph == eager.content != plain.content
    assert penalized._identifying_params["repetition_penalty"] == 1.5


def test_logprobs_come_in_response_metadata_and_run_eagerly(
    client: P.Client, replies: list[AIMessage]
) -> None:
    """As ChatOpenAI: `logprobs` / `top_logprobs` give `response_metadata["logprobs"]`, the
    server's own entries, also aggregated from a stream; inside a graph scope the call runs
    eagerly (the graph carries no logprobs)."""
    chat = make_chat(client, logprobs=True, top_logprobs=2)
    body = {"messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 6,
            "temperature": 0.0, "top_p": 1.0, "top_k": -1, "stop": [], "logprobs": True,
            "top_logprobs": 2}  # fmt: skip
    expected = chat.connection().openai.post("/v1/chat/completions", body)["choices"][0]

    reply = chat.invoke(PROMPTS[0])
    streamed = None
    for chunk in chat.stream(PROMPTS[0]):
        streamed = chunk if streamed is None else streamed + chunk
    with parrotlet_graph(chat):
        scoped = chat.invoke(PROMPTS[0])

    content = reply.response_metadata["logprobs"]["content"]
    assert [e["token"] for e in content] == [e["token"] for e in expected["logprobs"]["content"]]
    assert [e["logprob"] for e in content] == pytest.approx(
        [e["logprob"] for e in expected["logprobs"]["content"]], abs=1e-4)  # fmt: skip
    assert "".join(e["token"] for e in content) == reply.content == replies[0].content
    assert all(len(e["top_logprobs"]) == 2 for e in content)
    assert streamed is not None
    assert [e["token"] for e in streamed.response_metadata["logprobs"]["content"]] == [
        e["token"] for e in content]  # fmt: skip
    assert not isinstance(scoped.content, SemanticText)
    assert [e["token"] for e in scoped.response_metadata["logprobs"]["content"]] == [
        e["token"] for e in content]  # fmt: skip
    assert "logprobs" not in replies[0].response_metadata


def test_a_logit_bias_applies_on_both_routes(client: P.Client) -> None:
    rome = 7268  # " Rome" in the default model's tokenizer
    chat = make_chat(client, max_tokens=3, logit_bias={rome: 100})

    eager = chat.invoke(PROMPTS[1])
    with parrotlet_graph(chat):
        graph = str(chat.invoke(PROMPTS[1]).content)

    assert graph == eager.content == " Rome Rome Rome"
