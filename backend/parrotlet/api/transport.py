"""Transports: how a client Session reaches ServeCore — the Transport protocol, the result of a
fetch, and LocalTransport (an in-process ServeCore, no HTTP). HttpTransport lives in http.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

from parrotlet.graph.ir import Graph, PerfCriterion
from parrotlet.serve.results import VariableResult

if TYPE_CHECKING:
    from parrotlet.serve.core import ServeCore

LOCAL_TENANT = "local"
Fetch = dict[str, PerfCriterion]  # variables a submit announces the client will get next


class Transport(Protocol):
    """The six session operations of the serving API, as coroutines on the Client's portal loop.

    Implementations raise the parrotlet.serve.errors types (GraphError/ValueError for bad input,
    NotFoundError, AuthError, ServeTimeoutError) with the server's message.
    """

    async def create_session(
        self, graph: Graph | None = None, *, eager: bool = False, fetch: Fetch | None = None
    ) -> str:
        """A new session, with `graph` as its first increment, in one request; `fetch`: the
        variables the client gets next, demanded with the graph (ServeCore.submit)."""
        ...

    async def delete_session(self, session_id: str) -> None: ...

    async def submit(
        self, session_id: str, graph: Graph, *, eager: bool, fetch: Fetch | None = None
    ) -> dict[str, Any]: ...

    async def set_variable(self, session_id: str, name: str, value: str) -> None: ...

    async def get_variable(
        self, session_id: str, name: str, *, criterion: PerfCriterion, timeout: float | None
    ) -> VariableResult: ...

    def stream_variable(
        self, session_id: str, name: str, *, criterion: PerfCriterion
    ) -> AsyncIterator[str]: ...

    async def close(self) -> None: ...


class LocalTransport:
    """Calls a ServeCore that lives on the same event loop, as one fixed tenant.

    Owns the core: `close()` closes it.
    """

    def __init__(self, core: ServeCore, tenant: str = LOCAL_TENANT) -> None:
        self.core = core
        self.tenant = tenant

    async def create_session(
        self, graph: Graph | None = None, *, eager: bool = False, fetch: Fetch | None = None
    ) -> str:
        return await self.core.create_session(self.tenant, eager=eager, graph=graph, fetch=fetch)

    async def delete_session(self, session_id: str) -> None:
        self.core.delete_session(self.tenant, session_id)

    async def submit(
        self, session_id: str, graph: Graph, *, eager: bool, fetch: Fetch | None = None
    ) -> dict[str, Any]:
        return await self.core.submit(self.tenant, session_id, graph, eager=eager, fetch=fetch)

    async def set_variable(self, session_id: str, name: str, value: str) -> None:
        await self.core.set_variable(self.tenant, session_id, name, value)

    async def get_variable(
        self, session_id: str, name: str, *, criterion: PerfCriterion, timeout: float | None
    ) -> VariableResult:
        return await self.core.get_variable(
            self.tenant, session_id, name, criterion=criterion, timeout=timeout
        )

    async def stream_variable(
        self, session_id: str, name: str, *, criterion: PerfCriterion
    ) -> AsyncIterator[str]:
        async for delta in self.core.stream_variable(
            self.tenant, session_id, name, criterion=criterion
        ):
            yield delta

    async def close(self) -> None:
        await self.core.close()
