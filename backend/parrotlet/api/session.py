"""Client Session: the graph increment an app is building (pending calls, transforms and
variables), flushed to ServeCore in ONE submit right before the first fetch that needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Mapping
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, TypeVar

from parrotlet.api.portal import Portal
from parrotlet.api.transport import Fetch, Transport, VariableResult
from parrotlet.graph.ir import Call, Graph, PerfCriterion, Transform, Variable

T = TypeVar("T")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*")
_current: ContextVar[Session | None] = ContextVar("parrotlet_session", default=None)


def current_session() -> Session:
    """The session of the innermost `with client.session()` / `async with client.asession()`."""
    session = _current.get()
    if session is None:
        raise RuntimeError(
            "no active parrotlet session: build calls inside `with client.session():` "
            "or `async with client.asession():`"
        )
    return session


def resolve_session(sessions: Iterable[Session]) -> Session:
    """The one session a new node belongs to: the current one, else that of its inputs.

    ValueError if the inputs come from another session (sessions never share variables).
    """
    owner = _current.get()
    for session in sessions:
        if owner is None:
            owner = session
        elif session is not owner:
            raise ValueError("a semantic variable from another session cannot be used here")
    if owner is None:
        return current_session()
    return owner


class Session:
    """One application instance: a server-side session plus the increment not yet submitted.

    Building (new ids, calls, transforms, variables) is local and thread-safe. Fetches run on the
    Client's portal: each first submits the whole pending increment (one request, naming the
    variable fetched and those `expect`ed, whose calls start with it), in order, then issues its
    own request. A Session built without a portal/transport is offline: it only builds
    graphs (`take_pending`), which tests use. With `eager`, submitted calls start at once instead
    of when a fetch needs them. Leaving the `with` block deletes the server-side session (its
    variables become unreadable); an increment still pending then is dropped, as nothing fetched it.
    """

    def __init__(
        self,
        portal: Portal | None = None,
        transport: Transport | None = None,
        *,
        eager: bool = False,
    ) -> None:
        self.portal = portal
        self.transport = transport
        self.eager = eager
        self.id: str | None = None
        self.closed = False
        self._lock = threading.RLock()
        self._submit_lock = asyncio.Lock()
        self._counters: dict[str, int] = {}
        self._used: set[str] = set()
        self._variables: list[Variable] = []
        self._calls: list[Call] = []
        self._transforms: list[Transform] = []
        self._expected: Fetch = {}
        self._token: Token[Session | None] | None = None

    # ---- building (local) ----------------------------------------------------------------
    def new_id(self, base: str) -> str:
        """A fresh node id `"{base}-{n}"`, unique in this session (n counts from 1 per base)."""
        with self._lock:
            n = self._counters.get(base, 0)
            while True:
                n += 1
                candidate = f"{base}-{n}"
                if candidate not in self._used:
                    break
            self._counters[base] = n
            self._used.add(candidate)
            return candidate

    def declare(self, name: str, value: str | None = None, *, user: bool = False) -> None:
        """Add a Variable to the pending increment; `user` names are checked and reserved."""
        if value is not None and not isinstance(value, str):
            raise TypeError(f"value of variable {name!r} must be a str, got {type(value).__name__}")
        with self._lock:
            self._check_open()
            if user:
                if not isinstance(name, str) or not _NAME.fullmatch(name):
                    raise ValueError(
                        f"variable name {name!r} must be letters, digits, '_' or '-' "
                        "('.' is reserved for generated names)"
                    )
                if name in self._used:
                    raise ValueError(f"variable name {name!r} is already used in this session")
                self._used.add(name)
            self._variables.append(Variable(name, value))

    def add_call(self, call: Call) -> None:
        with self._lock:
            self._check_open()
            self._calls.append(call)

    def add_transform(self, transform: Transform) -> None:
        with self._lock:
            self._check_open()
            self._transforms.append(transform)

    def set_pending_value(self, name: str, value: str) -> bool:
        """Give a still-pending declaration its value; False if `name` was already submitted."""
        with self._lock:
            for i, var in enumerate(self._variables):
                if var.name == name:
                    if var.value is not None:
                        raise ValueError(f"variable {name!r} already has a value")
                    self._variables[i] = Variable(name, value)
                    return True
        return False

    def expect(self, fetch: Mapping[str, str]) -> None:
        """Announce variables (name -> criterion) about to be fetched: the next submit names
        them all, so their calls start with it rather than as each fetch arrives."""
        with self._lock:
            self._check_open()
            _merge_fetch(self._expected, fetch)

    def take_pending(self) -> Graph | None:
        """Remove and return the pending increment as one Graph (None when nothing is pending)."""
        with self._lock:
            if not (self._variables or self._calls or self._transforms):
                return None
            graph = Graph(tuple(self._variables), tuple(self._calls), tuple(self._transforms))
            self._variables, self._calls, self._transforms = [], [], []
            return graph

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"session {self.id!r} is closed")

    # ---- the one async implementation (runs on the portal) -------------------------------
    async def _delete(self) -> None:
        self.closed = True
        if self.id is not None:
            await self._transport().delete_session(self.id)

    async def _flush(self, fetch: Fetch | None = None) -> None:
        """Submit the pending increment; increments reach the server in the order taken. The
        server-side session is created with the first increment, in the same request. `fetch`:
        the variables about to be fetched, announced with the increment (and those `expect`ed
        since the last submit) so that their calls start before the fetches' own requests."""
        self._check_entered()
        async with self._submit_lock:
            with self._lock:  # the increment and the fetches expected of it, together
                graph = self.take_pending()
                fetch, self._expected = _merge_fetch(self._expected, fetch or {}), {}
            if self.id is None:
                fetch = fetch if graph is not None else None
                self.id = await self._transport().create_session(
                    graph, eager=self.eager, fetch=fetch
                )
            elif graph is not None:
                await self._transport().submit(self.id, graph, eager=self.eager, fetch=fetch)

    async def _fetch(
        self, name: str, criterion: PerfCriterion, timeout: float | None
    ) -> VariableResult:
        await self._flush({name: criterion})
        return await self._transport().get_variable(
            self._id(), name, criterion=criterion, timeout=timeout
        )

    async def _stream(self, name: str, criterion: PerfCriterion) -> AsyncIterator[str]:
        await self._flush({name: criterion})
        async for delta in self._transport().stream_variable(self._id(), name, criterion=criterion):
            yield delta

    async def _set(self, name: str, value: str) -> None:
        await self._flush()
        await self._transport().set_variable(self._id(), name, value)

    def _transport(self) -> Transport:
        if self.transport is None:
            raise RuntimeError("this session is offline (no client): it can only build graphs")
        return self.transport

    def _id(self) -> str:
        assert self.id is not None, "flushed sessions have an id"
        return self.id

    def _check_entered(self) -> None:
        self._check_open()
        if self._token is None:
            raise RuntimeError("the session is not open: enter it with `with` / `async with`")

    # ---- sync / async front ends ---------------------------------------------------------
    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run one of the session's coroutines to completion from synchronous code."""
        if self.portal is None:
            coro.close()
            raise RuntimeError("this session is offline (no client): it can only build graphs")
        return self.portal.call(coro)

    async def acall(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await one of the session's coroutines from any event loop."""
        if self.portal is None:
            coro.close()
            raise RuntimeError("this session is offline (no client): it can only build graphs")
        return await self.portal.acall(coro)

    def flush(self) -> None:
        """Submit what is pending now (fetches do this themselves)."""
        self.call(self._flush())

    async def aflush(self) -> None:
        await self.acall(self._flush())

    def __enter__(self) -> Session:
        self._activate()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.portal is not None:
                with contextlib.suppress(Exception) if exc_type else contextlib.nullcontext():
                    self.call(self._delete())
        finally:
            self.closed = True
            self._deactivate()

    async def __aenter__(self) -> Session:
        self._activate()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.portal is not None:
                with contextlib.suppress(Exception) if exc_type else contextlib.nullcontext():
                    await self.acall(self._delete())
        finally:
            self.closed = True
            self._deactivate()

    def _activate(self) -> None:
        if self._token is not None or self.closed:
            raise RuntimeError("a Session can be entered only once")
        self._token = _current.set(self)

    def _deactivate(self) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"Session(id={self.id!r}, eager={self.eager}, {state})"


def _merge_fetch(into: Fetch, fetch: Mapping[str, str]) -> Fetch:
    """`into` with `fetch`'s criteria added (a latency fetch wins over a throughput one);
    unchanged if a criterion is not a PerfCriterion value (ValueError)."""
    criteria = {name: PerfCriterion(criterion) for name, criterion in fetch.items()}
    for name, criterion in criteria.items():
        into[name] = criterion.joined(into.get(name))
    return into
