"""The HTTP front door: authenticate, parse the body, call ServeCore, map errors to status codes.

Session routes live here; OpenAI-compatible routes in openai_api. Every error goes through one
handler (`wire.error_payload`), so a bad request gets a 4xx and the server keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from parrotlet.graph.ir import Graph, PerfCriterion
from parrotlet.serve.auth import ApiKeys, request_tenant
from parrotlet.serve.body_limit import BodyLimit
from parrotlet.serve.errors import AuthError, NotFoundError, ServeTimeoutError
from parrotlet.serve.metrics import render_prometheus
from parrotlet.serve.openai_api import router as openai_router
from parrotlet.serve.registry import router as engines_router
from parrotlet.serve.wire import error_payload, sse_response

if TYPE_CHECKING:
    from parrotlet.serve.core import ServeCore

logger = logging.getLogger(__name__)
router = APIRouter()
_HANDLED = (
    RequestValidationError,
    HTTPException,
    AuthError,
    NotFoundError,
    ServeTimeoutError,
    ValueError,
    Exception,
)


def create_app(core: ServeCore, api_keys: ApiKeys, engine_keys: ApiKeys | None = None) -> FastAPI:
    """The ASGI app serving `core`; its lifespan starts and closes the core. `engine_keys` are
    the keys engine workers register with (tenant keys cannot register engines)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await core.start()
        try:
            yield
        finally:
            await core.close()

    app = FastAPI(title="parrotlet", lifespan=lifespan)
    app.state.core = core
    app.state.api_keys = api_keys
    app.state.engine_keys = engine_keys or ApiKeys()
    for cls in _HANDLED:
        app.add_exception_handler(cls, _handle_error)
    app.include_router(router)
    app.include_router(openai_router)
    app.include_router(engines_router)
    app.add_middleware(BodyLimit, max_bytes=core.config.max_request_bytes)
    return app


async def _handle_error(request: Request, exc: Exception) -> JSONResponse:
    status, body = error_payload(exc)
    if status >= 500:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


# ---- bodies --------------------------------------------------------------------------------
class CreateSessionBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    eager: bool = False
    graph: dict[str, Any] | None = None  # the first increment, submitted with the session
    fetch: dict[str, str] | None = None  # variable -> criterion: gets that will follow


class SubmitBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    graph: dict[str, Any]
    eager: bool = False
    fetch: dict[str, str] | None = None  # as in CreateSessionBody


class SetBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    value: str


def _core(request: Request) -> ServeCore:
    return request.app.state.core


# ---- session routes (async: ServeCore runs on the event loop, never in a thread pool) ------
@router.post("/v1/sessions", status_code=201)
async def create_session(
    request: Request,
    body: CreateSessionBody | None = None,
    tenant: str = Depends(request_tenant),
) -> dict[str, str]:
    body = body or CreateSessionBody()
    graph = Graph.from_dict(body.graph) if body.graph is not None else None
    session_id = await _core(request).create_session(
        tenant, eager=body.eager, graph=graph, fetch=body.fetch
    )
    return {"session_id": session_id}


@router.delete("/v1/sessions/{session_id}", status_code=204)
async def delete_session(
    session_id: str, request: Request, tenant: str = Depends(request_tenant)
) -> Response:
    _core(request).delete_session(tenant, session_id)
    return Response(status_code=204)


@router.post("/v1/sessions/{session_id}/graph")
async def submit(
    session_id: str, body: SubmitBody, request: Request, tenant: str = Depends(request_tenant)
) -> dict[str, Any]:
    graph = Graph.from_dict(body.graph)
    core = _core(request)
    return await core.submit(tenant, session_id, graph, eager=body.eager, fetch=body.fetch)


@router.put("/v1/sessions/{session_id}/variables/{name}", status_code=204)
async def set_variable(
    session_id: str,
    name: str,
    body: SetBody,
    request: Request,
    tenant: str = Depends(request_tenant),
) -> Response:
    await _core(request).set_variable(tenant, session_id, name, body.value)
    return Response(status_code=204)


@router.get("/v1/sessions/{session_id}/variables/{name}")
async def get_variable(
    session_id: str,
    name: str,
    request: Request,
    criterion: PerfCriterion = PerfCriterion.LATENCY,
    timeout: float | None = Query(default=None, gt=0),
    tenant: str = Depends(request_tenant),
) -> dict[str, Any]:
    info = await _core(request).get_variable(
        tenant, session_id, name, criterion=criterion, timeout=timeout
    )
    return info.to_dict()


@router.get("/v1/sessions/{session_id}/variables/{name}/stream")
async def stream_variable(
    session_id: str,
    name: str,
    request: Request,
    criterion: PerfCriterion = PerfCriterion.LATENCY,
    tenant: str = Depends(request_tenant),
) -> Response:
    deltas = _core(request).stream_variable(tenant, session_id, name, criterion=criterion)
    return sse_response(_delta_events(deltas))


async def _delta_events(deltas: AsyncIterator[str]) -> AsyncIterator[dict[str, str]]:
    try:
        async for delta in deltas:
            yield {"delta": delta}
    finally:
        await deltas.aclose()  # type: ignore[attr-defined]


# ---- unauthenticated operational routes ----------------------------------------------------
@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics")
async def metrics(request: Request) -> PlainTextResponse:
    text = render_prometheus(_core(request).stats())
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")
