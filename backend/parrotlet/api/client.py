"""Client: the app's connection to parrotlet — a remote server over HTTP, or a ServeCore inside
this process — and the factory of Sessions. It owns the portal loop on which all I/O runs.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

from parrotlet.api.openai_routes import OpenAIRoutes
from parrotlet.api.portal import Portal
from parrotlet.api.session import Session
from parrotlet.api.transport import LocalTransport, Transport

if TYPE_CHECKING:
    import httpx

    from parrotlet.engine.config import EngineConfig
    from parrotlet.serve.config import ServeConfig
    from parrotlet.serve.core import ServeCore


class Client:
    """A connection to one parrotlet server; sessions built from it share its portal loop.

    `Client(base_url, api_key)` talks HTTP (`timeout` bounds each request, except the wait of a
    get or stream, which the server bounds). `Client.in_process()` loads the model into a
    ServeCore on the portal loop and calls it directly (`core` is that ServeCore, else None).
    Use it as a context manager, or `close()` it, to free the connection or the model.
    `http_transport` replaces httpx's network layer (tests pass httpx.ASGITransport(app)).
    `openai` sends single requests to the server's OpenAI-compatible routes.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        *,
        http_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        from parrotlet.api.http import HttpTransport

        transport = HttpTransport(base_url, api_key, timeout, http_transport)
        portal = Portal()
        self._setup(portal, transport, None, OpenAIRoutes.for_remote(portal, transport))

    @classmethod
    def in_process(
        cls, engine_config: EngineConfig | None = None, serve_config: ServeConfig | None = None
    ) -> Client:
        """A client with its own ServeCore (loads the model; imports torch)."""
        from parrotlet.engine.config import EngineConfig
        from parrotlet.serve.core import ServeCore

        async def build() -> ServeCore:
            core = ServeCore.from_config(engine_config or EngineConfig(), serve_config)
            await core.start()
            return core

        portal = Portal()
        try:
            core = portal.call(build())
        except BaseException:
            portal.close()
            raise
        client = cls.__new__(cls)
        client._setup(portal, LocalTransport(core), core, OpenAIRoutes.for_core(portal, core))
        return client

    def _setup(
        self,
        portal: Portal,
        transport: Transport,
        core: ServeCore | None,
        openai: OpenAIRoutes,
        owns_portal: bool = True,
    ) -> None:
        self._portal = portal
        self._transport = transport
        self._openai = openai
        self._owns_portal = owns_portal
        self._closed = False
        self.core = core

    def sibling(self, serve_config: ServeConfig, tenant: str = "sibling") -> Client:
        """An in-process client on the same engines and loop with other serving flags, e.g.
        request-level serving for a like-with-like comparison. Its `tenant` has its own prefix
        cache namespace, so neither client reuses the other's cached prompts. Closing it keeps
        this one open."""
        if self.core is None:
            raise ValueError("sibling() needs an in-process client (Client.in_process())")
        core = self.core.sibling(serve_config)
        client = Client.__new__(Client)
        openai = OpenAIRoutes.for_core(self._portal, core)
        client._setup(self._portal, LocalTransport(core, tenant), core, openai, owns_portal=False)
        return client

    def session(self, eager: bool = False) -> Session:
        """A new session; `with client.session() as s:` opens it on the server, makes it the
        current session of semantic functions and transforms, and deletes it on exit."""
        return Session(self._portal, self._transport, eager=eager)

    def asession(self, eager: bool = False) -> Session:
        """The same as `session`, for `async with client.asession() as s:`."""
        return self.session(eager)

    @property
    def portal(self) -> Portal:
        """The client's event-loop thread: adapters run their own coroutines on it (next to the
        transport and an in-process ServeCore) with `portal.call` / `await portal.acall`."""
        return self._portal

    @property
    def openai(self) -> OpenAIRoutes:
        """The server's OpenAI-compatible routes (`/v1/chat/completions`, `/v1/completions`,
        `/v1/models`) for single requests, on this client's portal loop: a remote client's own
        connection, or an in-process server's FastAPI app (built on first use)."""
        return self._openai

    @property
    def closed(self) -> bool:
        return self._closed or self._portal.closed

    def close(self) -> None:
        """Close the transport (and an in-process ServeCore), then stop the portal loop."""
        if self.closed:
            return
        self._closed = True
        try:
            self._portal.call(self._close_connections())
        finally:
            if self._owns_portal:
                self._portal.close()

    async def aclose(self) -> None:
        if self.closed:
            return
        self._closed = True
        try:
            await self._portal.acall(self._close_connections())
        finally:
            if self._owns_portal:
                self._portal.close()

    async def _close_connections(self) -> None:
        try:
            await self._openai.close()
        finally:
            await self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        kind = "in-process" if self.core is not None else type(self._transport).__name__
        return f"Client({kind}, {'closed' if self.closed else 'open'})"
