"""HTTP wire conventions every route shares: OpenAI's error body and server-sent events.

`error_payload` is the ONE mapping from exceptions to status codes (app.py installs it as the
exception handler; streams use it for errors raised after the response has started).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException

from parrotlet.serve.errors import AuthError, NotFoundError, ServeTimeoutError

_ERRORS: tuple[tuple[type[Exception], int, str], ...] = (
    (AuthError, 401, "authentication_error"),
    (NotFoundError, 404, "not_found_error"),
    (ServeTimeoutError, 408, "timeout_error"),
    (ValueError, 400, "invalid_request_error"),  # GraphError and bad parameters
)


def error_payload(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The status code and OpenAI-shaped body `{"error": {message, type, param, code}}`."""
    if isinstance(exc, RequestValidationError):
        return 400, _error_body(_validation_message(exc), "invalid_request_error")
    if isinstance(exc, HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return exc.status_code, _error_body(str(exc.detail), kind)
    for cls, status, kind in _ERRORS:
        if isinstance(exc, cls):
            return status, _error_body(str(exc), kind, getattr(exc, "code", None))
    return 500, _error_body("internal server error", "server_error")


def _error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _validation_message(exc: RequestValidationError) -> str:
    """Every problem of a malformed body or query (up to 5), each with its field's path."""
    errors = exc.errors()
    if errors and errors[0]["type"] == "json_invalid":
        first = errors[0]
        return f"malformed JSON body: {first.get('ctx', {}).get('error', first['msg'])}"
    problems = [f"{_field_path(e['loc'])}: {e['msg']}" for e in errors[:5]]
    return "; ".join(problems) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")


def _field_path(loc: tuple[int | str, ...]) -> str:
    """("body", "messages", 0, "role") -> "messages[0].role"; a bare ("body",) stays "body"."""
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
    return path.lstrip(".") or str(loc[0])


def sse_response(events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """Server-sent events: one `data: <json>` per event, then `data: [DONE]`. An error after the
    response started is sent in-band as `data: {"error": ...}`."""
    return StreamingResponse(
        _sse_frames(events),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _sse_frames(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    try:
        async for event in events:
            yield f"data: {json.dumps(event)}\n\n"
    except Exception as exc:
        yield f"data: {json.dumps(error_payload(exc)[1])}\n\n"
    finally:
        await events.aclose()
    yield "data: [DONE]\n\n"
