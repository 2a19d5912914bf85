"""Connection: one parrotlet server as the LangChain adapters reach it — a `parrotlet.Client`, for
its session API (graphs) and its OpenAI-compatible routes (`client.openai`, single requests), all
run on the Client's portal loop. Remote (`parrotlet serve`) and in-process servers look the same.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

from parrotlet import Client

if TYPE_CHECKING:
    from parrotlet.api.openai_routes import OpenAIRoutes
    from parrotlet.api.portal import Portal

_LOCK = threading.Lock()
_REMOTE: dict[tuple[str, str | None, float, int], Connection] = {}
_BY_CLIENT: weakref.WeakKeyDictionary[Client, Connection] = weakref.WeakKeyDictionary()


class Connection:
    """A shared link to one server: sessions for graphs, OpenAI routes for one-off calls.

    Models with the same `client` (or the same base_url, api_key, timeout and max_retries) share
    one Connection, so their graph calls can meet in one graph scope. Single requests go through
    `client.openai` (the Client's own connection, or an in-process server's app, no socket).
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.portal: Portal = client.portal
        self._model_name: str | None = None

    @property
    def model_name(self) -> str:
        """The served model's name (asked once: the in-process core, or GET /v1/models)."""
        if self._model_name is None:
            core = self.client.core
            self._model_name = (
                core.model_name
                if core is not None
                else self.openai.get("/v1/models")["data"][0]["id"]
            )
        return self._model_name

    @property
    def openai(self) -> OpenAIRoutes:
        """The server's OpenAI-compatible routes (sync and async, on the portal loop)."""
        return self.client.openai

    def __repr__(self) -> str:
        return f"Connection({self.client!r})"


def connection_for_client(
    client: Client,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
    max_retries: int = 0,
) -> Connection:
    """The Connection of an existing parrotlet Client (one per Client). Its requests, OpenAI
    routes included, use the Client's own URL, key, timeout and pool (`client.openai`), so
    `base_url`, `api_key`, `timeout` and `max_retries` are unused; they stay for callers that
    pass a model's settings."""
    del base_url, api_key, timeout, max_retries  # the Client's own settings apply
    with _LOCK:
        connection = _BY_CLIENT.get(client)
        if connection is None:
            connection = Connection(client)
            _BY_CLIENT[client] = connection
        return connection


def remote_connection(
    base_url: str, api_key: str | None, timeout: float, max_retries: int
) -> Connection:
    """The shared Connection to `base_url` (a Client is opened on first use, kept open); a
    request whose connection failed is retried `max_retries` times."""
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
    key = (base_url.rstrip("/"), api_key, float(timeout), int(max_retries))
    with _LOCK:
        connection = _REMOTE.get(key)
        if connection is None:
            import httpx

            retrying = httpx.AsyncHTTPTransport(retries=max_retries)
            client = Client(base_url, api_key=api_key, timeout=timeout, http_transport=retrying)
            connection = Connection(client)
            _REMOTE[key] = connection
        return connection
