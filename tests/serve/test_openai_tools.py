"""Tool calling on /v1/chat/completions with the default model (SmolLM2, whose template has no
tools: parrotlet's instruction and the Hermes call format)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from parrotlet.serve.core import ServeCore

from .helpers import error_of, parse_sse

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MODEL = "SmolLM2-135M-Instruct"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": QUESTION, "max_tokens": 24, "temperature": 0,
            "tools": [WEATHER], **extra}  # fmt: skip


async def test_probe(client_a: httpx.AsyncClient, core: ServeCore) -> None:
    for extra in ({}, {"tool_choice": "required"}, {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}):
        r = await client_a.post("/v1/chat/completions", json=chat_body(**extra))
        print(extra, r.status_code, json.dumps(r.json()["choices"]))
        r = await client_a.post("/v1/chat/completions", json=chat_body(stream=True, **extra))
        print(parse_sse(r.text))
    assert 0
