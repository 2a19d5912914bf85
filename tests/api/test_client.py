"""Client: no torch on import, the HTTP wire protocol and error mapping (mock transport), and
end to end against a real in-process ServeCore and the real FastAPI app on the default model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import parrotlet as P
from examples import structured_extraction
from parrotlet.api.http import ServerError

from .test_function import GREEDY_8

KEY = "test-key-api"  # made up for these tests


def make_step() -> P.SemanticFunction:
    @P.semantic_function(temperature=0, max_tokens=8)
    def step(text, out):
        """Continue this text: {{input:text}} {{output:out}}"""

    return step


def make_summarize() -> P.SemanticFunction:
    @P.semantic_function(temperature=0, max_tokens=6)
    def summarize(chunk, summary):
        """Give a title for: {{input:chunk}}
        Title: {{output:summary}}"""

    return summarize


def run_chain(step: P.SemanticFunction) -> P.SemanticVariable:
    return step(step(step("The sky is")))


def requests_delta(core, before: dict[str, int]) -> dict[str, int]:
    after = core.stats().client_requests
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def test_a_client_left_open_is_closed_at_exit_with_its_tasks_cancelled() -> None:
    """A script that never closes its client: the portal's tasks (an in-process engine's loop)
    are cancelled at exit instead of being destroyed while pending."""
    code = """
import asyncio
from parrotlet.api.portal import Portal

async def engine_loop():
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        print("cancelled", flush=True)
        raise

portal = Portal()
portal.submit(engine_loop())
portal.call(asyncio.sleep(0.01))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)  # fmt: skip

    assert (result.stdout, result.stderr) == ("cancelled\n", "")


# ---- import hygiene ------------------------------------------------------------------------
def test_app_api_does_not_import_torch() -> None:
    code = """
import sys
import parrotlet as P

@P.semantic_function(max_tokens=4)
def f(x, y):
    '''{{input:x}} {{output:y}}'''

with P.Session() as s:
    P.join([f("a"), "b"]).strip().regex("a")
    s.take_pending()
P.Client("http://127.0.0.1:9", api_key="k").close()
print(sorted(m for m in ("torch", "transformers", "parrotlet.serve.core") if m in sys.modules))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.strip() == "[]"


# ---- HTTP transport against a scripted server ----------------------------------------------
class ScriptedServer:
    """An httpx MockTransport handler: records requests, answers like the parrotlet HTTP API."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str, object]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        query = request.url.query.decode()
        self.requests.append((request.method, request.url.path, query, body))
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return _error(401, "invalid API key", "authentication_error")
        path = request.url.path
        if request.method == "POST" and path == "/v1/sessions":
            return httpx.Response(201, json={"session_id": "s-1"})
        if path.endswith("/graph"):
            return httpx.Response(200, json={"calls": [], "variables": []})
        if path.endswith("/stream"):
            events = ['{"delta": "Hel"}', '{"delta": "lo"}', "[DONE]"]
            if "missing" in path:
                events = ['{"error": {"message": "call failed", "type": "not_found_error"}}']
            return httpx.Response(200, text="".join(f"data: {e}\n\n" for e in events))
        if path.endswith("/missing"):
            return _error(404, "variable 'missing' not found", "not_found_error")
        if path.endswith("/slow"):
            return _error(408, "variable 'slow' was not set within 0.1 s", "timeout_error")
        if path.endswith("/boom"):
            return _error(500, "internal server error", "server_error")
        if request.method == "GET":
            return httpx.Response(
                200,
                json={
                    "name": path.rsplit("/", 1)[1],
                    "value": "Hello",
                    "finish_reason": "stop",
                    "prompt_tokens": 9,
                    "completion_tokens": 2,
                },
            )
        return httpx.Response(204)


def _error(status: int, message: str, kind: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message, "type": kind}})


@pytest.fixture
def scripted() -> Iterator[tuple[P.Client, ScriptedServer]]:
    server = ScriptedServer()
    client = P.Client("http://test", api_key=KEY, http_transport=httpx.MockTransport(server))
    yield client, server
    client.close()


def test_http_chain_is_one_request_with_the_graph_and_one_get(scripted) -> None:
    client, server = scripted
    step = make_step()
    with client.session() as session:
        last = run_chain(step)
        result = last.get_result(criterion="throughput", timeout=5)
        assert last.get() == "Hello"  # cached: no second request
        graph = session.take_pending()
    assert graph is None
    assert result == P.VariableResult("step-3.out", "Hello", "stop", 9, 2)
    methods = [(m, p, q) for m, p, q, _ in server.requests]
    assert methods == [
        ("POST", "/v1/sessions", ""),  # the session is created with the whole graph
        ("GET", "/v1/sessions/s-1/variables/step-3.out", "criterion=throughput&timeout=5"),
        ("DELETE", "/v1/sessions/s-1", ""),
    ]
    submitted = server.requests[0][3]
    assert submitted["eager"] is False
    assert [c["id"] for c in submitted["graph"]["calls"]] == ["step-1", "step-2", "step-3"]
    assert submitted["graph"]["calls"][2]["segments"][3] == {
        "output": "step-3.out",
        "sampling": GREEDY_8,
    }


def test_http_errors_map_to_typed_exceptions(scripted) -> None:
    client, server = scripted
    with client.session() as session:
        with pytest.raises(P.NotFoundError, match=r"^variable 'missing' not found$"):
            P.SemanticVariable(session, "missing").get()
        with pytest.raises(P.ServeTimeoutError, match=r"not set within 0\.1 s"):
            P.SemanticVariable(session, "slow").get(timeout=0.1)
        with pytest.raises(ServerError, match="HTTP 500: internal server error") as info:
            P.SemanticVariable(session, "boom").get()
        assert info.value.status_code == 500
        with pytest.raises(ValueError, match="criterion must be 'latency' or 'throughput'"):
            P.SemanticVariable(session, "x").get(criterion="fast")
        with pytest.raises(ValueError, match="timeout must be None or a number > 0"):
            P.SemanticVariable(session, "x").get(timeout=0)
    bad = P.Client("http://test", api_key="wrong", http_transport=httpx.MockTransport(server))
    with pytest.raises(P.AuthError, match="invalid API key"), bad.session() as session:
        P.SemanticVariable(session, "x").get()
    bad.close()


def test_http_stream_parses_server_sent_events(scripted) -> None:
    client, _ = scripted
    with client.session() as session:
        assert list(P.SemanticVariable(session, "greeting").stream()) == ["Hel", "lo"]
        with pytest.raises(P.NotFoundError, match="call failed"):
            list(P.SemanticVariable(session, "missing").stream())


# ---- end to end: in-process ServeCore on the default model ---------------------------------
@pytest.fixture(scope="module")
def local() -> Iterator[P.Client]:
    client = P.Client.in_process()
    yield client
    client.close()


@pytest.mark.slow
def test_chain_of_three_is_one_submit_and_one_get(local: P.Client) -> None:
    step = make_step()
    with local.session():
        last = run_chain(step)
        before = local.core.stats()
        result = last.get_result()
        after = local.core.stats()
    assert requests_delta(local.core, before.client_requests) == {
        "create_session": 1,  # created with the graph: one client request for both
        "submit": 1,
        "get": 1,
        "delete_session": 1,
    }
    assert after.calls_started - before.calls_started == 3
    assert after.calls_started_by_server - before.calls_started_by_server == 2
    assert result.name == "step-3.out"
    assert result.completion_tokens == 8
    assert result.finish_reason == "length"


@pytest.mark.slow
def test_map_join_reduce_runs_on_the_server(local: P.Client) -> None:
    summarize = make_summarize()
    with local.session():
        titles = [summarize(c) for c in ("cats purr", "dogs bark", "birds sing")]
        joined = P.join(titles, sep="; ")
        final = summarize(joined)
        before = local.core.stats()
        final_value = final.get()
        after = local.core.stats()
        parts = [t.get() for t in titles]
        assert joined.get() == "; ".join(parts)
    assert after.client_requests["submit"] - before.client_requests["submit"] == 1
    assert after.client_requests["get"] - before.client_requests["get"] == 1
    assert after.calls_started - before.calls_started == 4
    assert after.calls_started_by_server - before.calls_started_by_server == 1
    assert final_value != ""


@pytest.mark.slow
def test_stream_deltas_concatenate_to_get(local: P.Client) -> None:
    step = make_step()
    with local.session():
        out = step("Once upon a time")
        deltas = list(out.stream())
        assert len(deltas) > 1
        assert "".join(deltas) == out.get()


@pytest.mark.slow
def test_sessions_do_not_see_each_others_variables(local: P.Client) -> None:
    step = make_step()
    with local.session():
        out = step("Hello")
        out.get()
    with local.session() as other, pytest.raises(P.NotFoundError) as info:
        P.SemanticVariable(other, out.name).get()
    assert str(info.value) == f"variable 'step-1.out' not found in session {other.id!r}"
    with pytest.raises(RuntimeError, match="is closed"):
        step(out)


@pytest.mark.slow
def test_eager_session_starts_calls_at_submit(local: P.Client) -> None:
    step = make_step()
    with local.session(eager=True) as session:
        out = step("Eager")
        before = local.core.stats().calls_started
        session.flush()
        assert local.core.stats().calls_started - before == 1
        assert out.get_result().completion_tokens == 8


@pytest.mark.slow
def test_get_timeout_then_late_set(local: P.Client) -> None:
    with local.session():
        late = P.variable("late")
        echo = P.format("[{0}]", late)
        with pytest.raises(P.ServeTimeoutError, match=r"'format-1' was not set within 0\.2 s"):
            echo.get(timeout=0.2)
        late.set("now")
        assert echo.get() == "[now]"


@pytest.mark.slow
@pytest.mark.anyio
async def test_sync_and_async_apis_agree(local: P.Client) -> None:
    step, summarize = make_step(), make_summarize()
    with local.session():
        sync_chain = run_chain(step).get()
        sync_join = P.join([summarize("cats"), summarize("dogs")], sep="|").get()
    async with local.asession():
        last = run_chain(step)
        async_chain = await last.aget()
        joined = P.join([summarize("cats"), summarize("dogs")], sep="|")
        async_join = "".join([d async for d in joined.astream()])
    assert (async_chain, async_join) == (sync_chain, sync_join)


# ---- end to end over HTTP: the real FastAPI app through httpx.ASGITransport ----------------
class LazyServer:
    """An ASGI app that builds ServeCore and the parrotlet app on its first request, so the core
    lives on the loop that serves it (the Client's portal loop)."""

    def __init__(self) -> None:
        self.core = None
        self._app = None

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            from parrotlet.engine.config import EngineConfig
            from parrotlet.serve.app import create_app
            from parrotlet.serve.auth import ApiKeys
            from parrotlet.serve.core import ServeCore

            self.core = ServeCore.from_config(EngineConfig())
            self._app = create_app(self.core, ApiKeys([KEY]))
        await self._app(scope, receive, send)


@pytest.fixture(scope="module")
def remote() -> Iterator[tuple[P.Client, LazyServer]]:
    server = LazyServer()
    client = P.Client("http://test", api_key=KEY, http_transport=httpx.ASGITransport(app=server))
    with client.session() as session:
        session.flush()  # the first request (an empty session) builds the server
    yield client, server
    client.close()


@pytest.mark.slow
def test_the_first_fetch_travels_with_the_graph(remote, monkeypatch) -> None:
    """The fetch that flushes the graph names itself, and what was `expect`ed, in that request,
    so the server starts those calls a round trip before their gets arrive."""
    client, server = remote
    announced = []
    submit = server.core.submit  # create_session submits its graph through it too

    def recording(*args: Any, **kwargs: Any) -> dict[str, Any]:
        announced.append(kwargs["fetch"])
        return submit(*args, **kwargs)

    monkeypatch.setattr(server.core, "submit", recording)
    step = make_step()
    with client.session() as session:
        last, other = run_chain(step), step("The sea is")
        session.expect({other.name: "throughput", last.name: "throughput"})
        with pytest.raises(ValueError, match="'soon' is not a valid PerfCriterion"):
            session.expect({other.name: "soon"})
        last.get()
        assert other.get()
        assert step(last).get()  # a second increment: POST .../graph names its fetch too
    assert announced == [
        {"step-3.out": "latency", "step-4.out": "throughput"},
        {"step-5.out": "latency"},
    ]


@pytest.mark.slow
def test_http_end_to_end_matches_in_process(remote, local: P.Client) -> None:
    client, server = remote
    step = make_step()
    with client.session():
        last = run_chain(step)
        before = server.core.stats().client_requests
        remote_value = last.get()
        assert requests_delta(server.core, before) == {"create_session": 1, "submit": 1, "get": 1}
        streamed = "".join(step(last).stream())
    with local.session():
        last = run_chain(step)
        assert last.get() == remote_value
        assert step(last).get() == streamed


@pytest.mark.slow
def test_http_errors_from_the_real_app(remote) -> None:
    client, _ = remote
    with client.session() as session:
        pending = P.variable("pending")
        with pytest.raises(P.ServeTimeoutError, match=r"'pending' was not set within 0\.2 s"):
            pending.get(timeout=0.2)
        with pytest.raises(P.NotFoundError) as info:
            P.SemanticVariable(session, "nope").get()
        assert str(info.value) == f"variable 'nope' not found in session {session.id!r}"
        pending.set("now")  # already submitted: a PUT
        assert pending.get() == "now"
        with pytest.raises(ValueError, match=r"^variable 'pending' is already set; it cannot be"):
            pending.set("again")


@pytest.mark.slow
def test_a_guided_output_is_json_that_a_server_side_field_reads(remote) -> None:
    """A Guide travels with its call over HTTP; the next step reads the JSON on the server."""
    client, _ = remote
    city = {"type": "object", "properties": {"city": {"type": "string"},
            "country": {"type": "string"}}, "required": ["city", "country"]}  # fmt: skip

    @P.semantic_function(temperature=0, max_tokens=40, guide=P.Guide.json(city))
    def locate(place, answer):
        """What is the capital city of {{input:place}}? Reply with JSON: the city and its
        country.{{output:answer}}"""

    with client.session():
        answer = locate("Spain")
        capital = answer.json_field("city")
        assert capital.get() == "Madrid"
        assert json.loads(answer.get()) == {"city": "Madrid", "country": "Spain"}


@pytest.mark.slow
def test_structured_extraction_example_is_one_submit(local: P.Client, capsys) -> None:
    before = local.core.stats().client_requests.get("submit", 0)

    records, title = structured_extraction.main(local)

    assert local.core.stats().client_requests["submit"] - before == 1
    assert records == [
        {"topic": "Gull Rock", "year": 1831},
        {"topic": "Life on the Rock", "year": 1893},
        {"topic": "In the twentieth century", "year": 2022},
    ]
    assert capsys.readouterr().out.splitlines() == [
        *(json.dumps(r) for r in records),
        f"headline: {title}",
    ]


@pytest.mark.slow
def test_an_output_asking_for_logprobs_gets_them_with_its_value(remote, local: P.Client) -> None:
    """`logprobs=k` on a semantic function: the fetched result lists each generated token's
    logprob and its k likeliest (greedy: the token itself first), in process and over HTTP."""

    @P.semantic_function(temperature=0, max_tokens=8, logprobs=2)
    def answer(question, reply):
        """{{input:question}} {{output:reply}}"""

    @P.semantic_function(temperature=0, max_tokens=8)
    def plain(question, reply):
        """{{input:question}} {{output:reply}}"""

    question = "What is the capital of France?"
    results = []
    for client in (local, remote[0]):
        with client.session():
            results.append(answer(question).get_result())
            assert plain(question).get_result().logprobs == ()
    tokenizer = local.core.tokenizer

    in_process, over_http = results
    tokens = [lp.token_id for lp in in_process.logprobs]
    assert len(tokens) == in_process.completion_tokens
    assert tokenizer.decode(tokens, skip_special_tokens=True) == in_process.value
    for lp in in_process.logprobs:
        assert len(lp.top) == 2 and lp.top[0] == (lp.token_id, lp.logprob)
    assert [lp.token_id for lp in over_http.logprobs] == tokens
    assert [lp.logprob for lp in over_http.logprobs] == pytest.approx(
        [lp.logprob for lp in in_process.logprobs], abs=1e-4)  # fmt: skip
