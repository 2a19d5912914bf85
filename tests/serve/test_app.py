"""Session routes over the real default model: lifecycle, tenant isolation, 4xx mapping."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from parrotlet.serve.app import create_app
from parrotlet.serve.auth import ApiKeys
from parrotlet.serve.core import ServeCore

from .helpers import KEY_A, error_of, make_call, make_client, make_graph, parse_sse

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris."  # greedy, SmolLM2-135M-Instruct


async def make_session(client: httpx.AsyncClient, graph: dict[str, Any] | None = None) -> str:
    created = await client.post("/v1/sessions")
    assert created.status_code == 201
    session_id = created.json()["session_id"]
    if graph is not None:
        submitted = await client.post(f"/v1/sessions/{session_id}/graph", json={"graph": graph})
        assert submitted.status_code == 200, submitted.text
    return session_id


def question_graph() -> dict[str, Any]:
    return make_graph([make_call("ask", [], "answer")], {})


async def test_submit_then_get_returns_the_generated_value(client_a: httpx.AsyncClient) -> None:
    created = await client_a.post("/v1/sessions")
    assert created.status_code == 201
    assert set(created.json()) == {"session_id"}
    sid = created.json()["session_id"]
    graph = make_graph([make_call("ask", ["q"], "answer")], {"q": QUESTION})
    submitted = await client_a.post(f"/v1/sessions/{sid}/graph", json={"graph": graph})
    assert submitted.status_code == 200
    assert submitted.json() == {"calls": ["ask"], "variables": ["q"]}

    got = await client_a.get(f"/v1/sessions/{sid}/variables/answer", params={"timeout": 60})

    assert got.status_code == 200
    assert got.json() == {
        "name": "answer",
        "value": ANSWER,
        "finish_reason": "stop",
        "prompt_tokens": 43,
        "completion_tokens": 8,  # 7 text tokens + the end-of-turn token
    }


async def test_a_session_created_with_its_graph_answers_in_one_more_request(
    client_a: httpx.AsyncClient, core: ServeCore
) -> None:
    graph = make_graph([make_call("ask", ["q"], "answer")], {"q": QUESTION})
    created = await client_a.post("/v1/sessions", json={"graph": graph})
    assert created.status_code == 201
    sid = created.json()["session_id"]
    got = await client_a.get(f"/v1/sessions/{sid}/variables/answer", params={"timeout": 60})
    assert got.json()["value"] == ANSWER

    sessions = core.stats().num_sessions
    bad = make_graph([make_call("ask", ["nowhere"], "answer")], {})
    refused = await client_a.post("/v1/sessions", json={"graph": bad})
    assert refused.status_code == 400
    assert "nowhere" in error_of(refused)["message"]
    assert core.stats().num_sessions == sessions  # a refused graph leaves no session behind


async def test_a_session_created_with_its_fetch_checks_it(
    client_a: httpx.AsyncClient, core: ServeCore
) -> None:
    graph = make_graph([make_call("ask", ["q"], "answer")], {"q": QUESTION})
    started = core.stats().calls_started
    body = {"graph": graph, "fetch": {"answer": "latency"}}
    created = await client_a.post("/v1/sessions", json=body)
    assert created.status_code == 201
    assert core.stats().calls_started == started + 1  # running before the get
    sid = created.json()["session_id"]
    got = await client_a.get(f"/v1/sessions/{sid}/variables/answer", params={"timeout": 60})
    assert got.json()["value"] == ANSWER

    refused = await client_a.post("/v1/sessions", json={"graph": graph, "fetch": {"answer": 1}})
    assert refused.status_code == 400
    assert error_of(refused)["message"] == "fetch.answer: Input should be a valid string"
    refused = await client_a.post("/v1/sessions", json={"graph": graph, "fetch": {"x": "latency"}})
    assert refused.status_code == 404
    assert "fetched variable 'x'" in error_of(refused)["message"]


async def test_stream_deltas_concatenate_to_the_value(client_a: httpx.AsyncClient) -> None:
    graph = make_graph([make_call("ask", ["q"], "answer")], {"q": QUESTION})
    sid = await make_session(client_a, graph)

    streamed = await client_a.get(f"/v1/sessions/{sid}/variables/answer/stream")

    assert streamed.status_code == 200
    assert streamed.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = parse_sse(streamed.text)
    assert events[-1] == "[DONE]"
    assert all(set(e) == {"delta"} for e in events[:-1])
    assert len(events) > 2  # streamed token by token, not in one piece
    assert "".join(e["delta"] for e in events[:-1]) == ANSWER


async def test_client_set_variable_feeds_a_waiting_call(client_a: httpx.AsyncClient) -> None:
    sid = await make_session(client_a, make_graph([make_call("ask", ["q"], "answer")], {"q": None}))

    put = await client_a.put(f"/v1/sessions/{sid}/variables/q", json={"value": QUESTION})
    assert put.status_code == 204
    got = await client_a.get(f"/v1/sessions/{sid}/variables/answer")

    assert got.json()["value"] == ANSWER
    again = await client_a.put(f"/v1/sessions/{sid}/variables/q", json={"value": "x"})
    assert again.status_code == 400
    assert "'q'" in error_of(again)["message"]


async def test_deleted_session_is_gone(client_a: httpx.AsyncClient) -> None:
    sid = await make_session(client_a)

    deleted = await client_a.delete(f"/v1/sessions/{sid}")

    assert deleted.status_code == 204
    assert deleted.content == b""
    again = await client_a.delete(f"/v1/sessions/{sid}")
    assert again.status_code == 404
    assert error_of(again) == {
        "message": f"session {sid!r} not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }


# ---- isolation ------------------------------------------------------------------------------
async def test_another_tenant_cannot_touch_a_session(
    client_a: httpx.AsyncClient, client_b: httpx.AsyncClient
) -> None:
    sid = await make_session(client_a, make_graph([make_call("ask", ["q"], "answer")], {"q": None}))
    base = f"/v1/sessions/{sid}"

    attempts = [
        await client_b.get(f"{base}/variables/answer", params={"timeout": 1}),
        await client_b.get(f"{base}/variables/answer/stream"),
        await client_b.put(f"{base}/variables/q", json={"value": "stolen"}),
        await client_b.post(f"{base}/graph", json={"graph": question_graph()}),
        await client_b.delete(base),
    ]

    for response in attempts:
        assert response.status_code == 404
        assert error_of(response)["message"] == f"session {sid!r} not found"
    put = await client_a.put(f"{base}/variables/q", json={"value": QUESTION})  # still A's
    assert put.status_code == 204


async def test_a_second_session_cannot_read_the_first_ones_variables(
    client_a: httpx.AsyncClient,
) -> None:
    graph = make_graph([make_call("ask", ["q"], "answer")], {"q": "x"})
    first = await make_session(client_a, graph)
    second = await make_session(client_a)

    got = await client_a.get(f"/v1/sessions/{second}/variables/answer")
    referenced = await client_a.post(
        f"/v1/sessions/{second}/graph",
        json={"graph": make_graph([make_call("peek", ["answer"], "leak")])},
    )

    assert got.status_code == 404
    assert error_of(got)["message"] == f"variable 'answer' not found in session {second!r}"
    assert referenced.status_code == 400
    assert "'answer'" in error_of(referenced)["message"]
    assert first != second


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing API key: send 'Authorization: Bearer <key>'"),
        ({"Authorization": "Bearer not-a-key"}, "invalid API key"),
        ({"Authorization": "test-key-tenant-a"}, "malformed Authorization header: expected "
         "'Bearer <key>'"),
    ],
)  # fmt: skip
async def test_missing_or_wrong_api_key_is_401(
    anonymous: httpx.AsyncClient, headers: dict[str, str], message: str
) -> None:
    for method, url in [("POST", "/v1/sessions"), ("GET", "/v1/sessions/s-1/variables/x"),
                        ("POST", "/v1/completions"), ("GET", "/v1/models")]:  # fmt: skip
        response = await anonymous.request(method, url, headers=headers, json={"prompt": "hi"})
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert error_of(response) == {
            "message": message,
            "type": "authentication_error",
            "param": None,
            "code": None,
        }


async def test_health_and_metrics_need_no_key(anonymous: httpx.AsyncClient) -> None:
    health = await anonymous.get("/health")
    metrics = await anonymous.get("/metrics")

    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert metrics.status_code == 200


# ---- bad input ------------------------------------------------------------------------------
BAD_GRAPHS = {
    "cycle": (
        make_graph([make_call("c1", ["b"], "a"), make_call("c2", ["a"], "b")]),
        ["cycle", "'a'"],
    ),
    "unknown variable": (make_graph([make_call("c1", ["nope"], "a")]), ["'c1'", "'nope'"]),
    "two producers": (
        make_graph([make_call("c1", [], "x"), make_call("c2", [], "x")]),
        ["'x'", "'c1'", "'c2'"],
    ),
    "prompt longer than the context": (
        make_graph([make_call("long", ["text"], "x")], {"text": "hello " * 9000}),
        ["'long'", "context is 8192"],
    ),
    "invalid sampling params": (
        make_graph([make_call("c1", [], "x", temperature=-1)]),
        ["calls[0].segments[1].sampling", "temperature", "-1"],
    ),
    "unknown sampling param": (
        make_graph([make_call("c1", [], "x", temprature=0.5)]),
        ["calls[0].segments[1].sampling", "temprature"],
    ),
    "malformed segment": ({"calls": [{"id": "c1", "segments": [{}]}]}, ["calls[0].segments[0]"]),
}


@pytest.mark.parametrize("case", list(BAD_GRAPHS))
async def test_bad_graph_is_400_naming_the_problem_and_the_session_keeps_working(
    client_a: httpx.AsyncClient, case: str
) -> None:
    graph, names = BAD_GRAPHS[case]
    sid = await make_session(client_a)

    rejected = await client_a.post(f"/v1/sessions/{sid}/graph", json={"graph": graph})

    assert rejected.status_code == 400
    error = error_of(rejected)
    assert error["type"] == "invalid_request_error"
    for name in names:
        assert name in error["message"]
    graph = make_graph([make_call("ask", ["q"], "answer", max_tokens=2)], {"q": QUESTION})
    accepted = await client_a.post(f"/v1/sessions/{sid}/graph", json={"graph": graph})
    assert accepted.status_code == 200  # the rejected increment left no trace
    got = await client_a.get(f"/v1/sessions/{sid}/variables/answer")
    assert got.json()["value"] == "The capital"


@pytest.mark.parametrize(
    ("method", "path", "body", "message"),
    [
        ("POST", "graph", b"{not json", "malformed JSON body: Expecting property name enclosed "
         "in double quotes"),
        ("POST", "graph", b'{"graf": {}}', "graph: Field required; graf: Extra inputs are not "
         "permitted"),
        ("POST", "graph", b'{"graph": {}, "eager": "yes"}', "eager: Input should be a valid "
         "boolean"),
        ("POST", "graph", b"[1]", "body: Input should be a valid dictionary or object to "
         "extract fields from"),
        ("POST", "graph", b"", "body: Field required"),
        ("POST", "graph", b'{"graph": {"calls": {}}}', "graph.calls must be a list"),
        ("PUT", "variables/q", b'{"value": 3}', "value: Input should be a valid string"),
        ("GET", "variables/q?criterion=fast", b"", "criterion: Input should be 'latency' or "
         "'throughput'"),
        ("GET", "variables/q?timeout=0", b"", "timeout: Input should be greater than 0"),
    ],
)  # fmt: skip
async def test_malformed_request_is_400_with_the_field(
    client_a: httpx.AsyncClient, method: str, path: str, body: bytes, message: str
) -> None:
    sid = await make_session(client_a, make_graph([], {"q": None}))
    headers = {"content-type": "application/json"}

    response = await client_a.request(
        method, f"/v1/sessions/{sid}/{path}", content=body, headers=headers
    )

    assert response.status_code == 400
    assert error_of(response) == {
        "message": message,
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


async def test_get_times_out_with_408(client_a: httpx.AsyncClient) -> None:
    sid = await make_session(client_a, make_graph([], {"never": None}))

    response = await client_a.get(f"/v1/sessions/{sid}/variables/never", params={"timeout": 0.05})

    assert response.status_code == 408
    assert error_of(response) == {
        "message": "variable 'never' was not set within 0.05 s",
        "type": "timeout_error",
        "param": None,
        "code": None,
    }


async def test_unknown_route_is_404_in_the_error_shape(client_a: httpx.AsyncClient) -> None:
    response = await client_a.get("/v1/nothing-here")

    assert response.status_code == 404
    assert error_of(response)["type"] == "not_found_error"


async def test_bad_requests_do_not_disturb_other_sessions(
    client_a: httpx.AsyncClient, client_b: httpx.AsyncClient, core: ServeCore
) -> None:
    graph = make_graph([make_call("ask", ["q"], "answer")], {"q": QUESTION})
    sid = await make_session(client_b, graph)
    bad_sid = await make_session(client_a)
    bad_graph = make_graph([make_call("c1", ["b"], "a"), make_call("c2", ["a"], "b")])

    streamed, *bad = await asyncio.gather(
        client_b.get(f"/v1/sessions/{sid}/variables/answer/stream"),
        client_a.post(f"/v1/sessions/{bad_sid}/graph", content=b"{"),
        client_a.post(f"/v1/sessions/{bad_sid}/graph", json={"graph": bad_graph}),
        client_a.post("/v1/completions", json={"prompt": "hi", "temperature": -1}),
        client_a.get(f"/v1/sessions/{sid}/variables/answer"),
    )

    assert [r.status_code for r in bad] == [400, 400, 400, 404]
    assert "".join(e["delta"] for e in parse_sse(streamed.text)[:-1]) == ANSWER
    assert core.stats().engines[0].num_running == 0


async def test_bodies_over_the_limit_are_413_and_the_server_goes_on(
    core: ServeCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core, "config", replace(core.config, max_request_bytes=1000))
    small = create_app(core, ApiKeys([KEY_A]))
    graph = make_graph([make_call("c", ["q"], "a")], {"q": "x" * 2000})

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        body = json.dumps({"graph": graph}).encode()
        for i in range(0, len(body), 500):
            yield body[i : i + 500]

    async with make_client(small, KEY_A) as client:
        declared = await client.post("/v1/sessions", json={"graph": graph})
        chunked = await client.post(
            "/v1/sessions", content=chunks(), headers={"content-type": "application/json"}
        )
        fine = await client.post("/v1/sessions", json={})

    assert (declared.status_code, chunked.status_code, fine.status_code) == (413, 413, 201)
    assert error_of(declared)["message"] == (
        f"request body has {len(declared.request.content)} bytes, the limit is 1000 "
        "(max_request_bytes)"
    )
    assert error_of(chunked)["message"] == (
        "request body has at least 1500 bytes, the limit is 1000 (max_request_bytes)"
    )
