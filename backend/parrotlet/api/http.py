"""HttpTransport: a client Session's requests to a remote parrotlet server over httpx (and the
JSON requests of `Client.openai`), with the server's JSON errors mapped back to the typed errors
ServeCore raises.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx

from parrotlet.api.transport import Fetch
from parrotlet.graph.ir import Graph, PerfCriterion
from parrotlet.serve.errors import AuthError, NotFoundError, ServeTimeoutError
from parrotlet.serve.results import VariableResult

# Error bodies are OpenAI-shaped; `type` names the kind (used for in-band stream errors).
_BY_TYPE: dict[str, type[Exception]] = {
    "invalid_request_error": ValueError,
    "authentication_error": AuthError,
    "not_found_error": NotFoundError,
    "timeout_error": ServeTimeoutError,
}
_BY_STATUS: dict[int, type[Exception]] = {
    400: ValueError,
    401: AuthError,
    404: NotFoundError,
    408: ServeTimeoutError,
}


class ServerError(RuntimeError):
    """An HTTP error the API does not define (5xx, or a proxy's answer); keeps the status."""

    def __init__(self, message: str, status_code: int, error_type: str = "") -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_type = error_type


def error_from_response(status_code: int, body: bytes) -> Exception:
    """The typed error for an error body `{"error": {"message", "type", ...}}`.

    The status picks the class (400 ValueError — GraphError on the server —, 401 AuthError,
    404 NotFoundError, 408 ServeTimeoutError); an in-band stream error (status 200) goes by its
    `type`. Anything else is a ServerError keeping the status.
    """
    message, error_type = _parse_error(body)
    cls = _BY_STATUS.get(status_code) or (_BY_TYPE.get(error_type) if status_code < 400 else None)
    if cls is None:
        return ServerError(f"HTTP {status_code}: {message}", status_code, error_type)
    return cls(message)


def _parse_error(body: bytes) -> tuple[str, str]:
    try:
        error = json.loads(body)["error"]
        return str(error["message"]), str(error.get("type", ""))
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:500] or "(empty body)", ""


class HttpTransport:
    """The HTTP API of one server (`base_url`), authenticated with `api_key` when given.

    `timeout` bounds every request except the wait of a get or a stream, which the server bounds
    (a get's `timeout` is passed on and the HTTP read allows that much more).
    `http_transport` replaces httpx's network transport (tests use httpx.ASGITransport).
    Besides the session operations it sends plain JSON requests (`get_json`, `post_json`,
    `stream_json`) for the server's OpenAI-compatible routes.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        http_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=timeout,
            transport=http_transport,
        )

    async def create_session(
        self, graph: Graph | None = None, *, eager: bool = False, fetch: Fetch | None = None
    ) -> str:
        body = {"eager": eager, "graph": graph.to_dict() if graph is not None else None}
        body |= _fetch_field(fetch)
        response = await self._request("POST", "/v1/sessions", json=body)
        return response.json()["session_id"]

    async def delete_session(self, session_id: str) -> None:
        await self._request("DELETE", _session_path(session_id))

    async def submit(
        self, session_id: str, graph: Graph, *, eager: bool, fetch: Fetch | None = None
    ) -> dict[str, Any]:
        body = {"graph": graph.to_dict(), "eager": eager} | _fetch_field(fetch)
        response = await self._request("POST", f"{_session_path(session_id)}/graph", json=body)
        return response.json()

    async def set_variable(self, session_id: str, name: str, value: str) -> None:
        path = _variable_path(session_id, name)
        await self._request("PUT", path, json={"value": value})

    async def get_variable(
        self, session_id: str, name: str, *, criterion: PerfCriterion, timeout: float | None
    ) -> VariableResult:
        params: dict[str, Any] = {"criterion": criterion.value}
        if timeout is not None:
            params["timeout"] = timeout
        wait = httpx.Timeout(self.timeout, read=None if timeout is None else timeout + self.timeout)
        path = _variable_path(session_id, name)
        response = await self._request("GET", path, params=params, timeout=wait)
        return VariableResult.from_dict(response.json())

    async def stream_variable(
        self, session_id: str, name: str, *, criterion: PerfCriterion
    ) -> AsyncIterator[str]:
        path = f"{_variable_path(session_id, name)}/stream"
        params = {"criterion": criterion.value}
        wait = httpx.Timeout(self.timeout, read=None)
        async for event in self._events("GET", path, params=params, timeout=wait):
            yield event["delta"]

    # ---- the OpenAI-compatible routes (OpenAIRoutes) -------------------------------------
    async def get_json(self, path: str) -> dict[str, Any]:
        """GET `path` and return its JSON body."""
        return (await self._request("GET", path)).json()

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to `path` and return the JSON answer; the read waits as long as the
        server generates (max_tokens bounds it)."""
        wait = httpx.Timeout(self.timeout, read=None)
        return (await self._request("POST", path, json=body, timeout=wait)).json()

    async def stream_json(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """POST `body` to `path`; yield each server-sent event's JSON until `[DONE]`."""
        wait = httpx.Timeout(self.timeout, read=None)
        async for event in self._events("POST", path, json=body, timeout=wait):
            yield event

    async def close(self) -> None:
        await self._http.aclose()

    async def _events(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[Any]:
        """The JSON events of a server-sent-event response until `[DONE]`; an error response or
        an error event raises its typed error."""
        async with self._http.stream(method, path, **kwargs) as response:
            if response.is_error:
                raise error_from_response(response.status_code, await response.aread())
            async for data in _sse_data(response.aiter_lines()):
                if data == "[DONE]":
                    return
                if not data:
                    continue
                event = json.loads(data)
                if isinstance(event, dict) and "error" in event:
                    raise error_from_response(response.status_code, data.encode())
                yield event

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self._http.request(method, path, **kwargs)
        if response.is_error:
            raise error_from_response(response.status_code, response.content)
        return response


async def _sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The `data` of each server-sent event (multi-line data joined with newlines)."""
    buffer: list[str] = []
    async for line in lines:
        if not line:
            if buffer:
                yield "\n".join(buffer)
                buffer.clear()
        elif line.startswith("data:"):
            buffer.append(line[5:].removeprefix(" "))
    if buffer:
        yield "\n".join(buffer)


def _fetch_field(fetch: Fetch | None) -> dict[str, Any]:
    """The submit body's `fetch` (variable -> criterion), left out when there is none."""
    return {"fetch": {name: c.value for name, c in fetch.items()}} if fetch else {}


def _session_path(session_id: str) -> str:
    return f"/v1/sessions/{quote(session_id, safe='')}"


def _variable_path(session_id: str, name: str) -> str:
    return f"{_session_path(session_id)}/variables/{quote(name, safe='')}"
