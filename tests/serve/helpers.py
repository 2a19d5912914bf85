"""Builders for HTTP-layer tests: clients per API key, graph wire dicts, SSE parsing."""

from __future__ import annotations

import json
from typing import Any

import httpx
from fastapi import FastAPI

# Made up for these tests only; a server gets its keys from --api-key / $PARROTLET_API_KEYS.
KEY_A = "test-key-tenant-a"
ENGINE_KEY = "test-key-engines"
KEY_B = "test-key-tenant-b"
GREEDY = {"temperature": 0, "max_tokens": 8}


def make_client(app: FastAPI, key: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", headers=headers
    )


def make_call(call_id: str, inputs: list[str], output: str, **sampling: Any) -> dict[str, Any]:
    """A chat call 'Answer: {inputs...}' producing `output` greedily (8 tokens unless given)."""
    segments: list[dict[str, Any]] = [{"text": "Answer in one word: "}]
    segments += [{"input": name} for name in inputs]
    segments.append({"output": output, "sampling": {**GREEDY, **sampling}})
    return {"id": call_id, "segments": segments}


def make_graph(
    calls: list[dict[str, Any]], variables: dict[str, str | None] | None = None
) -> dict[str, Any]:
    declared = [
        {"name": name} if value is None else {"name": name, "value": value}
        for name, value in (variables or {}).items()
    ]
    return {"variables": declared, "calls": calls}


def parse_sse(body: str) -> list[Any]:
    """The `data:` payloads of an event stream, JSON-decoded; "[DONE]" stays a string."""
    events = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: ") and "\n" not in block, f"bad SSE frame {block!r}"
        data = block.removeprefix("data: ")
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The OpenAI-shaped error of a response, checking the shape on the way."""
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]
