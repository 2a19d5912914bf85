"""Connection: one parrotlet server as the LangChain adapters reach it — its session API through a
`parrotlet.Client` (graphs) and its OpenAI-compatible routes through httpx (single requests), all
run on the Client's portal loop. Remote (`parrotlet serve`) and in-process servers look the same.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from parrotlet import Client

if TYPE_CHECKING:
    import httpx

    from parrotlet.api.portal import Portal

T = TypeVar("T")
_LOCK = threading.Lock()
_REMOTE: dict[tuple[str, str | None, float, int], Connection] = {}
_BY_CLIENT: weakref.WeakKeyDictionary[Client, Connection] = weakref.WeakKeyDictionary()
_IN_PROCESS_URL = "http://parrotlet.in-process"


class Connection:
    """A shared link to one server: sessions for graphs, OpenAI routes for one-off calls.

    Models with the same `client` (or the same base_url, api_key, timeout and max_retries) share
    one Connection, so their graph calls can meet in one graph scope. In-process clients serve
    the OpenAI routes by calling the server's ASGI app directly (no socket).
    """

    def __init__(
        self,
        client: Client,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 0,
    ) -> None:
        self.client = client
        # Client has no public accessor for its portal; a (never opened) Session exposes it.
        self.portal: Portal = client.portal
        self._base_url = base_url
        self._api_key = api_key
        self._timeout = timeout
        self._max_retries = max_retries
        self._http: httpx.AsyncClient | None = None

    # ---- running on the portal ---------------------------------------------------------
    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the portal loop, blocking this thread until it returns."""
        return self.portal.call(coro)

    async def acall(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` on the portal loop from any other event loop."""
        return await self.portal.acall(coro)

    def iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        return self.portal.iterate(items)

    def aiterate(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        return self.portal.aiterate(items)

    # ---- OpenAI-compatible routes (coroutines for the portal) ----------------------------
    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to an OpenAI-compatible route and return the JSON response."""
        response = await self._client().post(path, json=body)
        if response.is_error:
            raise _error(response.status_code, response.content)
        return response.json()

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """POST a streaming request; yield each server-sent event's JSON until `[DONE]`."""
        async with self._client().stream("POST", path, json=body) as response:
            if response.is_error:
                raise _error(response.status_code, await response.aread())
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if "error" in event:
                    raise _error(response.status_code, data.encode())
                yield event

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = self._build_http()
        return self._http

    def _build_http(self) -> httpx.AsyncClient:
        import httpx

        if self.client.core is not None:
            from parrotlet.serve.app import create_app
            from parrotlet.serve.auth import ApiKeys

            app = create_app(self.client.core, ApiKeys())
            transport: httpx.AsyncBaseTransport = httpx.ASGITransport(app=app)
            base_url = _IN_PROCESS_URL
        else:
            transport = httpx.AsyncHTTPTransport(retries=self._max_retries)
            base_url = (self._base_url or "").rstrip("/")
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        timeout = httpx.Timeout(self._timeout, read=None)  # generation time is the server's
        return httpx.AsyncClient(
            base_url=base_url, headers=headers, timeout=timeout, transport=transport
        )

    def __repr__(self) -> str:
        where = "in-process" if self.client.core is not None else self._base_url
        return f"Connection({where})"


def connection_for_client(
    client: Client,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
    max_retries: int = 0,
) -> Connection:
    """The Connection of an existing parrotlet Client (one per Client; the first call's
    arguments stay). A remote Client does not reveal its URL and key, so its OpenAI-compatible
    routes use `base_url` and `api_key`; an in-process one needs neither."""
    with _LOCK:
        connection = _BY_CLIENT.get(client)
        if connection is None:
            connection = Connection(
                client, base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries
            )
            _BY_CLIENT[client] = connection
        return connection


def remote_connection(
    base_url: str, api_key: str | None, timeout: float, max_retries: int
) -> Connection:
    """The shared Connection to `base_url` (a Client is opened on first use, kept open)."""
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
    key = (base_url.rstrip("/"), api_key, float(timeout), int(max_retries))
    with _LOCK:
        connection = _REMOTE.get(key)
        if connection is None:
            client = Client(base_url, api_key=api_key, timeout=timeout)
            connection = Connection(
                client, base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries
            )
            _REMOTE[key] = connection
        return connection


def _error(status: int, body: bytes) -> Exception:
    from parrotlet.api.http import error_from_response

    return error_from_response(status, body)
