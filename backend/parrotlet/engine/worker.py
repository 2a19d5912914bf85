"""Engine worker (`parrotlet engine-worker`): one LLMEngine in its own process behind a small HTTP
API. It registers with a `parrotlet serve` server and heartbeats its stats; the server places
calls on it through serve/remote_engine.py. Wire format: serve/engine_wire.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from parrotlet.engine.async_engine import AsyncEngine
from parrotlet.engine.config import EngineConfig
from parrotlet.engine.engine import LLMEngine
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.serve.engine_wire import (
    GenerateBody,
    HeartbeatBody,
    PrefixBody,
    RegisterBody,
    UnpinBody,
    output_to_dict,
    stats_to_dict,
    stream_error,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerOptions:
    """Where the worker listens and which server it reports to.

    `port` 0 picks a free port; `name` defaults to `<hostname>-<port>`; `api_key` is one of the
    server's API keys when its authentication is on. A quiet stream gets a blank line every
    `keepalive_s` seconds, so the server can tell a slow request from a lost worker.
    """

    server: str
    name: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    api_key: str | None = None
    heartbeat_interval_s: float = 0.5
    keepalive_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.server.startswith(("http://", "https://")):
            raise ValueError(f"server must be an http(s):// URL, got {self.server!r}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65536), got {self.port}")
        if self.heartbeat_interval_s <= 0 or self.keepalive_s <= 0:
            raise ValueError("heartbeat_interval_s and keepalive_s must be > 0")


# ---- the worker's HTTP API -------------------------------------------------------------------
def create_worker_app(engine: AsyncEngine, token: str = "", keepalive_s: float = 1.0) -> FastAPI:
    """The worker's API over `engine`; with a `token`, every route needs `Bearer <token>`."""

    async def authorized(request: Request) -> None:
        sent = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if token and not hmac.compare_digest(sent.encode(), token.encode()):
            raise PermissionError("invalid worker token")

    app = FastAPI(title="parrotlet engine worker", dependencies=[Depends(authorized)])
    app.add_exception_handler(PermissionError, _error_handler(401))
    app.add_exception_handler(ValueError, _error_handler(400))
    app.add_exception_handler(RequestValidationError, _error_handler(400))

    @app.post("/generate")
    async def generate(body: GenerateBody) -> StreamingResponse:
        params = SamplingParams.from_dict(body.sampling)
        outputs = engine.generate(
            body.prompt,
            params,
            priority=body.priority,
            cache_namespace=body.cache_namespace,
            group=body.group,
        )
        return _json_lines_response((output_to_dict(o) async for o in outputs), keepalive_s)

    @app.post("/pin")
    async def pin(body: PrefixBody) -> StreamingResponse:
        return _json_lines_response(_pin(engine, body), keepalive_s)

    @app.post("/unpin", status_code=204)
    async def unpin(body: UnpinBody) -> Response:
        await engine.unpin(body.pin_id)
        return Response(status_code=204)

    @app.post("/cached_prefix_len")
    async def cached_prefix_len(body: PrefixBody) -> dict[str, int]:
        num = await engine.call(
            lambda: engine.engine.cached_prefix_len(body.prompt, body.cache_namespace)
        )
        return {"num_tokens": num}

    @app.get("/stats")
    async def stats() -> dict[str, int]:
        return stats_to_dict(engine.engine.stats())

    return app


def _error_handler(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        message = str(exc.errors()) if isinstance(exc, RequestValidationError) else str(exc)
        return JSONResponse({"error": message}, status_code=status)

    return handle


async def _pin(engine: AsyncEngine, body: PrefixBody) -> AsyncIterator[dict[str, Any]]:
    pin = await engine.pin_prefix(body.prompt, body.cache_namespace)
    yield {"pin_id": pin.pin_id}


def _json_lines_response(
    items: AsyncIterator[dict[str, Any]], keepalive_s: float
) -> StreamingResponse:
    return StreamingResponse(_json_lines(items, keepalive_s), media_type="application/x-ndjson")


async def _json_lines(
    items: AsyncIterator[dict[str, Any]], keepalive_s: float
) -> AsyncIterator[str]:
    """One JSON object per line, a blank line after `keepalive_s` quiet seconds, and a last
    `stream_error` line if `items` fails. A client that leaves cancels `items` (which aborts the
    engine request) at the next line written."""
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for item in items:
                queue.put_nowait(item)
        except Exception as exc:
            queue.put_nowait(stream_error(exc))
        finally:
            queue.put_nowait(None)

    task = asyncio.create_task(pump())
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), keepalive_s)
            except TimeoutError:
                yield "\n"
                continue
            if item is None:
                return
            yield json.dumps(item) + "\n"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# ---- registration and heartbeats -------------------------------------------------------------
class RegistrationRejected(RuntimeError):
    """The server refused this worker (wrong model, bad API key...): retrying will not help."""


async def report_to_server(
    engine: AsyncEngine, registration: RegisterBody, options: WorkerOptions
) -> None:
    """Register, then heartbeat forever; re-register when the server forgets this worker."""
    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    async with httpx.AsyncClient(base_url=options.server, headers=headers, timeout=5.0) as client:
        registered, warned = False, False
        while True:
            try:
                if not registered:
                    await _register(client, registration)
                    registered, warned = True, False
                registered = await _heartbeat(client, registration.name, engine)
            except httpx.TransportError as exc:
                if not warned:
                    logger.warning("server %s unreachable (%s); retrying", options.server, exc)
                registered, warned = False, True
            await asyncio.sleep(options.heartbeat_interval_s)


async def _register(client: httpx.AsyncClient, registration: RegisterBody) -> None:
    response = await client.post("/v1/engines/register", json=registration.model_dump())
    if response.status_code != 200:
        raise RegistrationRejected(f"HTTP {response.status_code}: {response.text}")
    print(
        f"parrotlet: engine worker {registration.name} at {registration.url} registered",
        file=sys.stderr,
        flush=True,
    )


async def _heartbeat(client: httpx.AsyncClient, name: str, engine: AsyncEngine) -> bool:
    """Send the stats; False when the server does not know this worker (any more)."""
    body = HeartbeatBody(name=name, stats=stats_to_dict(engine.engine.stats()))
    response = await client.post("/v1/engines/heartbeat", json=body.model_dump())
    if response.status_code == 404:
        return False
    if response.status_code != 200:
        raise RegistrationRejected(f"heartbeat: HTTP {response.status_code}: {response.text}")
    return True


# ---- the process -----------------------------------------------------------------------------
def run_worker(config: EngineConfig, options: WorkerOptions, *, verbose: bool = False) -> int:
    """Load the model, serve until SIGINT/SIGTERM; 1 if the server rejected the worker."""
    try:
        asyncio.run(serve_worker(config, options, verbose=verbose))
    except RegistrationRejected as exc:
        print(f"parrotlet: error: the server rejected this worker: {exc}", file=sys.stderr)
        return 1
    return 0


async def serve_worker(
    config: EngineConfig, options: WorkerOptions, *, verbose: bool = False
) -> None:
    """Load the model, listen, register, and serve until the HTTP server stops."""
    from parrotlet.engine.models.default_model import resolve_model_path

    engine = LLMEngine.from_config(config)
    sock = _bind(options.host, options.port)
    port = sock.getsockname()[1]
    token = secrets.token_urlsafe(24)
    registration = RegisterBody(
        name=options.name or f"{socket.gethostname()}-{port}",
        url=f"http://{_advertised_host(options.host)}:{port}",
        model=resolve_model_path(config.model).name,
        max_model_len=engine.max_model_len,
        block_size=engine.blocks.block_size,
        token=token,
    )
    async_engine = AsyncEngine(engine)
    app = create_worker_app(async_engine, token, options.keepalive_s)
    log_level = "info" if verbose else "warning"
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=1))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.02)
    reporting = asyncio.create_task(report_to_server(async_engine, registration, options))
    await asyncio.wait({serving, reporting}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    reporting.cancel()
    results = await asyncio.gather(serving, reporting, return_exceptions=True)
    await async_engine.close()
    for result in results:
        if isinstance(result, Exception):  # RegistrationRejected, or the server failed to start
            raise result


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _advertised_host(host: str) -> str:
    """The host the server should call: this machine's name when listening on every interface."""
    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host
