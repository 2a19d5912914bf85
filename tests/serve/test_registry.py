"""Engine registry: workers register and heartbeat over HTTP; silent or lost ones are dropped."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.serve.app import create_app
from parrotlet.serve.auth import ApiKeys
from parrotlet.serve.config import ServeConfig
from parrotlet.serve.engine_wire import RegisterBody, stats_to_dict
from parrotlet.serve.engines import EngineDiedError, ModelInfo
from parrotlet.serve.registry import EngineRegistry
from parrotlet.serve.remote_engine import RemoteEngine

from .fake_engines import FakeEngine, make_stats
from .helpers import ENGINE_KEY, GREEDY, KEY_A, error_of, make_client

pytestmark = pytest.mark.anyio
MODEL = ModelInfo("tiny", 2048, (2,))
GREEDY_PARAMS = SamplingParams(**GREEDY)


def make_registration(name: str = "w0", **changes: Any) -> dict[str, Any]:
    body = {
        "name": name,
        "url": "http://127.0.0.1:1",
        "model": "tiny",
        "max_model_len": 2048,
        "block_size": 16,
        "token": "secret",
    }
    return {**body, **changes}


def make_app(registry: EngineRegistry):
    core = SimpleNamespace(registry=registry, config=ServeConfig())
    return create_app(core, ApiKeys([KEY_A]), ApiKeys([ENGINE_KEY]))  # type: ignore[arg-type]


def make_registry(engines: list, timeout_s: float = 3.0) -> EngineRegistry:
    return EngineRegistry(engines, MODEL, 16, heartbeat_timeout_s=timeout_s)


async def test_workers_register_and_heartbeat_over_http() -> None:
    local = FakeEngine("local-0")
    registry = make_registry([local])
    app = make_app(registry)
    async with make_client(app, ENGINE_KEY) as client:
        registered = await client.post("/v1/engines/register", json=make_registration())
        stats = stats_to_dict(make_stats(running=3))
        beat = await client.post("/v1/engines/heartbeat", json={"name": "w0", "stats": stats})
        listed = (await client.get("/v1/engines")).json()

    assert registered.json() == {"name": "w0", "heartbeat_timeout_s": 3.0}
    assert beat.json() == {"ok": True}
    assert [e.name for e in registry.engines] == ["local-0", "w0"]
    assert registry.remotes["w0"].stats().num_running == 3
    assert [(e["name"], e["url"], e["alive"]) for e in listed] == [
        ("local-0", None, True),
        ("w0", "http://127.0.0.1:1", True),
    ]
    await registry.close()
    await registry.remotes["w0"].close()


async def test_registration_errors_are_4xx_with_the_field() -> None:
    registry = make_registry([])
    app = make_app(registry)
    async with make_client(app, ENGINE_KEY) as client:
        model = await client.post("/v1/engines/register", json=make_registration(model="big"))
        short = await client.post(
            "/v1/engines/register", json=make_registration(max_model_len=1024)
        )
        beat = await client.post(
            "/v1/engines/heartbeat", json={"name": "ghost", "stats": stats_to_dict(make_stats())}
        )
    async with make_client(app, None) as anonymous:
        unauthenticated = await anonymous.post("/v1/engines/register", json=make_registration())
    async with make_client(app, KEY_A) as tenant:
        tenant_key = await tenant.post("/v1/engines/register", json=make_registration())

    assert (model.status_code, error_of(model)["message"]) == (
        400,
        "model: the server serves 'tiny', not 'big'",
    )
    assert (short.status_code, error_of(short)["message"]) == (
        400,
        "max_model_len: the server needs 2048, the engine has 1024",
    )
    assert (beat.status_code, error_of(beat)["message"]) == (
        404,
        "engine 'ghost' is not registered",
    )
    assert unauthenticated.status_code == 401
    assert tenant_key.status_code == 401  # a tenant key cannot register an engine
    assert registry.engines == []


async def test_an_engine_silent_past_the_timeout_is_swept_out() -> None:
    engines: list = []
    registry = make_registry(engines, timeout_s=0.5)
    registry.register(RegisterBody(**make_registration()))
    assert registry.sweep() == []

    await asyncio.sleep(1.2)
    registry.sweep()  # the background sweeper may have dropped it already

    assert engines == [] and registry.remotes == {}
    await registry.close()


async def test_registering_again_replaces_the_old_engine() -> None:
    engines: list = []
    registry = make_registry(engines)
    old = registry.register(RegisterBody(**make_registration()))
    new = registry.register(RegisterBody(**make_registration(url="http://127.0.0.1:2")))

    assert engines == [new] and not old.alive and new.alive
    await registry.close()
    await new.close()


async def test_a_worker_that_refuses_connections_is_dead_at_once() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    engine = RemoteEngine("w0", f"http://127.0.0.1:{port}", block_size=16)
    assert engine.alive

    with pytest.raises(EngineDiedError, match="engine w0 was lost"):
        async for _ in engine.generate([1, 2], GREEDY_PARAMS, priority=0, cache_namespace="t"):
            pass

    assert not engine.alive
    engine.heartbeat(make_stats())  # a worker that reports in again is alive again
    assert engine.alive
    await engine.close()


async def test_remote_engine_streams_a_workers_json_lines() -> None:
    lines = [
        b"\n",  # a keep-alive
        b'{"request_id": "r", "new_token_ids": [5], "text_delta": "Hi", "token_ids": [5], '
        b'"text": "Hi", "finished": false, "finish_reason": null, "num_prompt_tokens": 2, '
        b'"num_cached_tokens": 0, "error": null}\n',
        b'{"request_id": "r", "new_token_ids": [6], "text_delta": "!", "token_ids": [5, 6], '
        b'"text": "Hi!", "finished": true, "finish_reason": "stop", "num_prompt_tokens": 2, '
        b'"num_cached_tokens": 0, "error": null}\n',
    ]
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append({"auth": request.headers["authorization"], "path": request.url.path})
        return httpx.Response(200, content=b"".join(lines))

    engine = RemoteEngine(
        "w0", "http://w0", block_size=16, token="tok", transport=httpx.MockTransport(handler)
    )
    outs = [
        o async for o in engine.generate([1] * 20, GREEDY_PARAMS, priority=0, cache_namespace="t")
    ]

    assert [(o.text, o.finished) for o in outs] == [("Hi", False), ("Hi!", True)]
    assert seen == [{"auth": "Bearer tok", "path": "/generate"}]
    assert engine.cached_prefix_len([1] * 20, "t") == 16  # what it sent there
    await engine.close()
