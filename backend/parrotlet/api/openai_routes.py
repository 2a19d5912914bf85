"""OpenAIRoutes (`Client.openai`): the server's OpenAI-compatible routes (`/v1/chat/completions`,
`/v1/completions`, `/v1/models`) for single requests no graph Call expresses, e.g. a conversation
the server renders with the chat template. Adapters send them here; they run on the portal loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from parrotlet.api.portal import Portal

if TYPE_CHECKING:
    from parrotlet.api.http import HttpTransport
    from parrotlet.serve.core import ServeCore

IN_PROCESS_URL = "http://parrotlet.in-process"


class OpenAIRoutes:
    """JSON requests to the OpenAI-compatible routes of the server one Client talks to.

    `post` returns the JSON answer, `stream` yields each server-sent event's JSON until `[DONE]`,
    `get` returns a GET's JSON; `apost`, `astream` and `aget` are the same for any other event
    loop. Each runs on the Client's portal loop. Error responses and in-band error events raise
    the typed errors of `parrotlet.api.http.error_from_response` (ValueError, AuthError,
    NotFoundError, ServeTimeoutError, ServerError).

    A remote Client's requests share its own HttpTransport (URL, API key, connection pool); an
    in-process Client's go through the server's FastAPI app over httpx.ASGITransport (auth off),
    built once, on first use. Build one with `for_remote` or `for_core`.
    """

    def __init__(
        self, portal: Portal, connect: Callable[[], HttpTransport], *, owned: bool
    ) -> None:
        self._portal = portal
        self._connect = connect
        self._owned = owned
        self._http: HttpTransport | None = None

    @classmethod
    def for_remote(cls, portal: Portal, transport: HttpTransport) -> OpenAIRoutes:
        """Routes over a remote Client's own transport (closed by the Client, not here)."""
        return cls(portal, lambda: transport, owned=False)

    @classmethod
    def for_core(cls, portal: Portal, core: ServeCore) -> OpenAIRoutes:
        """Routes of an in-process ServeCore, through its FastAPI app (imports fastapi)."""
        return cls(portal, lambda: _asgi_transport(core), owned=True)

    # ---- sync / async front ends ---------------------------------------------------------
    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to `path` (e.g. "/v1/chat/completions"); the JSON answer."""
        return self._portal.call(self._post(path, body))

    async def apost(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._portal.acall(self._post(path, body))

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST a streaming request (`body` sets `"stream": true`); each event's JSON."""
        return self._portal.iterate(self._stream(path, body))

    def astream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self._portal.aiterate(self._stream(path, body))

    def get(self, path: str) -> dict[str, Any]:
        """GET `path` (e.g. "/v1/models"); the JSON answer."""
        return self._portal.call(self._get(path))

    async def aget(self, path: str) -> dict[str, Any]:
        return await self._portal.acall(self._get(path))

    # ---- on the portal loop ----------------------------------------------------------------
    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._transport().post_json(path, body)

    async def _stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        async for event in self._transport().stream_json(path, body):
            yield event

    async def _get(self, path: str) -> dict[str, Any]:
        return await self._transport().get_json(path)

    def _transport(self) -> HttpTransport:
        if self._http is None:
            self._http = self._connect()
        return self._http

    async def close(self) -> None:
        """Close the in-process connection, if one was opened (the Client calls this)."""
        if self._owned and self._http is not None:
            await self._http.close()

    def __repr__(self) -> str:
        return f"OpenAIRoutes({'in-process' if self._owned else 'remote'})"


def _asgi_transport(core: ServeCore) -> HttpTransport:
    import httpx

    from parrotlet.api.http import HttpTransport
    from parrotlet.serve.app import create_app
    from parrotlet.serve.auth import ApiKeys

    app = create_app(core, ApiKeys())
    return HttpTransport(IN_PROCESS_URL, http_transport=httpx.ASGITransport(app=app))
