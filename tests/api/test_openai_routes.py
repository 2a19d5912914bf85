"""Client.openai: the OpenAI-compatible routes over a remote Client's own connection (scripted
server: auth header, SSE parsing, typed errors) and in-process through the real app on the
default model (same greedy text as a graph call, streaming, the model card)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

import parrotlet as P
from parrotlet.serve.config import ServeConfig

KEY = "test-key-routes"  # made up for these tests
CHAT = "/v1/chat/completions"
PROMPT = "What is the capital of France?"
ANSWER = "The capital of France is Paris."


def make_body(prompt: str = PROMPT, **fields: object) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": prompt}], "max_tokens": 12, **fields}


def make_completion(text: str) -> dict[str, object]:
    message = {"role": "assistant", "content": text}
    return {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}


def make_chunk(text: str) -> str:
    return json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]})


# ---- import hygiene ------------------------------------------------------------------------
def test_remote_routes_import_no_server_code() -> None:
    code = """
import sys
import parrotlet as P
client = P.Client("http://127.0.0.1:9", api_key="k")
print(repr(client.openai))
client.close()
print(sorted(m for m in ("torch", "transformers", "fastapi", "parrotlet.serve.app")
             if m in sys.modules))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.splitlines() == ["OpenAIRoutes(remote)", "[]"]


# ---- remote: the Client's own connection, against a scripted server ------------------------
class ScriptedRoutes:
    """An httpx MockTransport handler answering like the server's OpenAI-compatible routes."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str | None, object]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        auth = request.headers.get("authorization")
        self.requests.append((request.method, request.url.path, auth, body))
        if auth != f"Bearer {KEY}":
            return _error(401, "invalid API key", "authentication_error")
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m", "max_model_len": 2048}]})
        prompt = body["messages"][-1]["content"]
        if prompt == "bad":
            return _error(400, "messages[0].content must not be empty", "invalid_request_error")
        if not body.get("stream"):
            return httpx.Response(200, json=make_completion("Paris."))
        events = [make_chunk("Par"), make_chunk("is."), "[DONE]"]
        if prompt == "slow":
            events = [make_chunk("Par"), json.dumps(_body("too slow", "timeout_error"))]
        return httpx.Response(200, text="".join(f"data: {e}\n\n" for e in events))


def _body(message: str, kind: str) -> dict[str, object]:
    return {"error": {"message": message, "type": kind}}


def _error(status: int, message: str, kind: str) -> httpx.Response:
    return httpx.Response(status, json=_body(message, kind))


@pytest.fixture
def scripted() -> Iterator[tuple[P.Client, ScriptedRoutes]]:
    server = ScriptedRoutes()
    client = P.Client("http://test", api_key=KEY, http_transport=httpx.MockTransport(server))
    yield client, server
    client.close()


def test_remote_requests_carry_the_clients_key(scripted) -> None:
    client, server = scripted
    assert client.openai is client.openai
    assert client.openai.get("/v1/models") == {"data": [{"id": "m", "max_model_len": 2048}]}
    assert client.openai.post(CHAT, make_body()) == make_completion("Paris.")
    events = list(client.openai.stream(CHAT, make_body(stream=True)))
    assert events == [json.loads(make_chunk("Par")), json.loads(make_chunk("is."))]
    assert server.requests == [
        ("GET", "/v1/models", f"Bearer {KEY}", None),
        ("POST", CHAT, f"Bearer {KEY}", make_body()),
        ("POST", CHAT, f"Bearer {KEY}", make_body(stream=True)),
    ]


def test_remote_errors_map_to_typed_exceptions(scripted) -> None:
    client, server = scripted
    with pytest.raises(ValueError, match=r"^messages\[0\]\.content must not be empty$"):
        client.openai.post(CHAT, make_body("bad"))
    with pytest.raises(ValueError, match=r"^messages\[0\]\.content must not be empty$"):
        list(client.openai.stream(CHAT, make_body("bad", stream=True)))
    events = client.openai.stream(CHAT, make_body("slow", stream=True))
    assert next(events) == json.loads(make_chunk("Par"))
    with pytest.raises(P.ServeTimeoutError, match=r"^too slow$"):
        next(events)
    wrong = P.Client("http://test", api_key="wrong", http_transport=httpx.MockTransport(server))
    with wrong, pytest.raises(P.AuthError, match=r"^invalid API key$"):
        wrong.openai.get("/v1/models")


def test_routes_of_a_closed_client_raise(scripted) -> None:
    client, _ = scripted
    client.close()
    with pytest.raises(RuntimeError, match=r"^the parrotlet client is closed$"):
        client.openai.get("/v1/models")


@pytest.mark.anyio
async def test_remote_async_front_ends(scripted) -> None:
    client, server = scripted
    assert (await client.openai.aget("/v1/models"))["data"][0]["id"] == "m"
    assert await client.openai.apost(CHAT, make_body()) == make_completion("Paris.")
    events = [e async for e in client.openai.astream(CHAT, make_body(stream=True))]
    assert [e["choices"][0]["delta"]["content"] for e in events] == ["Par", "is."]
    with pytest.raises(P.ServeTimeoutError, match=r"^too slow$"):
        _ = [e async for e in client.openai.astream(CHAT, make_body("slow", stream=True))]
    assert len(server.requests) == 4


# ---- in-process: the server's own app on the default model ---------------------------------
@pytest.fixture(scope="module")
def local() -> Iterator[P.Client]:
    client = P.Client.in_process()
    yield client
    client.close()


def make_greedy_answer(prompt: str) -> str:
    """`prompt` as one user message through a graph Call (the chat template), greedy."""

    @P.semantic_function(temperature=0, max_tokens=12)
    def answer(question, out):
        """{{input:question}}{{output:out}}"""

    return answer(prompt).get()


@pytest.mark.slow
def test_in_process_chat_matches_a_graph_call(local: P.Client) -> None:
    reply = local.openai.post(CHAT, make_body(temperature=0))
    choice = reply["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == (ANSWER, "stop")
    assert reply["usage"]["completion_tokens"] == 8
    with local.session():
        assert make_greedy_answer(PROMPT) == ANSWER


@pytest.mark.slow
def test_in_process_stream_concatenates_to_the_reply(local: P.Client) -> None:
    body = make_body(temperature=0, stream=True)
    events = list(local.openai.stream(CHAT, body))
    deltas = [c["delta"].get("content") or "" for e in events for c in e["choices"]]
    assert "".join(deltas) == ANSWER
    assert len([d for d in deltas if d]) > 1  # streamed in pieces, not one chunk


@pytest.mark.slow
def test_in_process_models_route(local: P.Client) -> None:
    card = local.openai.get("/v1/models")["data"][0]
    assert (card["id"], card["max_model_len"]) == ("SmolLM2-135M-Instruct", 8192)


@pytest.mark.slow
def test_in_process_app_is_built_once_per_client(local: P.Client, monkeypatch) -> None:
    import parrotlet.serve.app as app_module

    built = []
    create_app = app_module.create_app

    def counting_create_app(*args, **kwargs):
        built.append(args[0])
        return create_app(*args, **kwargs)

    monkeypatch.setattr(app_module, "create_app", counting_create_app)
    sibling = local.sibling(ServeConfig(app_scheduling=False), tenant="routes-test")
    with sibling:
        assert sibling.openai is not local.openai
        for _ in range(2):
            assert sibling.openai.get("/v1/models")["data"][0]["id"] == "SmolLM2-135M-Instruct"
    assert built == [sibling.core]
    assert local.openai.get("/v1/models")["object"] == "list"  # closing the sibling kept it
