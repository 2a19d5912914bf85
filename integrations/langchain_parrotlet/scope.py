"""GraphScope: while one is active, parrotlet models add their calls to ONE session graph and
return SemanticText futures; the pending graph is submitted (one request) when Python first needs
a value, and everything built so far is fetched together. `parrotlet_graph()` opens one.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Future
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Any

from langchain_parrotlet.connection import Connection, connection_for_client
from langchain_parrotlet.futures import Part, Ref, SemanticText, register
from langchain_parrotlet.parsers import install_parser_hooks
from parrotlet import SemanticVariable, VariableResult
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.graph.ir import Call, Input, Output, Role, Text, Transform

if TYPE_CHECKING:
    from parrotlet import Session

__all__ = ["GraphScope", "active_scope", "connection_of", "parrotlet_graph"]

_ACTIVE: ContextVar[GraphScope | None] = ContextVar("langchain_parrotlet_scope", default=None)
_IDS = itertools.count(1)


def active_scope(connection: Connection) -> GraphScope | None:
    """The innermost open graph scope, if it belongs to `connection`."""
    scope = _ACTIVE.get()
    if scope is not None and scope.open and scope.connection is connection:
        return scope
    return None


class GraphScope:
    """One application instance as one parrotlet session graph.

    Calls added here are not sent until a value is needed; then the whole pending increment goes
    in one submit and every output not fetched yet is fetched concurrently (the needed one with
    the "latency" criterion, the rest as "throughput"), so independent calls batch on the engine.
    With `exact_prompts` (the default), a prompt that refers to outputs is assembled on the
    server by a `format` transform and tokenized as one text, exactly as the same prompt sent as
    one request would be; without it, the prompt is Text/Input segments and generated token ids
    are spliced in (no re-tokenizing), which can tokenize differently where a segment boundary
    falls inside a pre-token (e.g. a blank line between two outputs).
    Leaving the scope fetches whatever is still unfetched — the calls plain LangChain would have
    run — so futures stay readable afterwards (with `raise_on_exit`, the first failed call's
    error is raised there); then the server-side session is deleted.
    """

    def __init__(
        self, connection: Connection, *, exact_prompts: bool = True, raise_on_exit: bool = True
    ) -> None:
        install_parser_hooks()
        self.id = f"g{next(_IDS)}"
        self.connection = connection
        self.exact_prompts = exact_prompts
        self.raise_on_exit = raise_on_exit
        self.session: Session = connection.client.session()
        self._variables: dict[str, SemanticVariable] = {}
        self._fetches: dict[str, Future[VariableResult]] = {}
        self._lock = threading.Lock()  # threads of one app (batch, LangGraph) resolve together
        self._state = "new"
        self._token: Token[GraphScope | None] | None = None
        register(self)

    @property
    def open(self) -> bool:
        return self._state == "open"

    # ---- building ----------------------------------------------------------------------
    def add_call(self, parts: Sequence[Part], sampling: SamplingParams, chat: bool) -> SemanticText:
        """Add one call whose prompt is `parts` (text and references); return its future."""
        self._check_open()
        return self._add(self._prompt(parts), sampling, chat)

    def add_chat_call(
        self, messages: Sequence[tuple[str, Sequence[Part]]], sampling: SamplingParams
    ) -> SemanticText:
        """Add one chat call of several `messages` (role, parts): Role segments, each followed
        by its message's prompt segments; return its future."""
        self._check_open()
        segments: list[Text | Input | Role] = []
        for role, parts in messages:
            segments.extend((Role(role), *(self._prompt(parts) or (Text(""),))))
        return self._add(tuple(segments), sampling, chat=True)

    def _add(
        self, segments: tuple[Text | Input | Role, ...], sampling: SamplingParams, chat: bool
    ) -> SemanticText:
        call_id = self.session.new_id("lc")
        out = f"{call_id}.out"
        self.session.add_call(Call(call_id, (*segments, Output(out, sampling)), chat))
        self._variables[out] = SemanticVariable(self.session, out)
        return SemanticText((Ref(self, out),))

    def _check_open(self) -> None:
        if not self.open:
            raise RuntimeError(f"graph scope {self.id} is not open")

    def _prompt(self, parts: Sequence[Part]) -> tuple[Text | Input, ...]:
        """Segments of one prompt text; with `exact_prompts`, one Input of a format transform
        where it refers to outputs not known yet."""
        segments = self.segments(parts)
        if self.exact_prompts and any(isinstance(s, Input) for s in segments):
            segments = (Input(self._format_prompt(segments)),)
        return segments

    def segments(self, parts: Sequence[Part]) -> tuple[Text | Input, ...]:
        """Prompt segments for `parts`: an unfetched output of this scope becomes an Input; known
        values and other scopes' outputs become text (merged, so text is tokenized as a whole)."""
        segments: list[Text | Input] = []
        text: list[str] = []
        for part in parts:
            if isinstance(part, Ref) and part.scope is self and not self.known(part.var):
                if text:
                    segments.append(Text("".join(text)))
                    text.clear()
                segments.append(Input(part.var))
            else:
                text.append(part if isinstance(part, str) else part.scope.value(part.var))
        if text:
            segments.append(Text("".join(text)))
        return tuple(s for s in segments if not (isinstance(s, Text) and not s.text))

    def _format_prompt(self, segments: Sequence[Text | Input]) -> str:
        """A server-side `format` transform that writes the prompt text; its variable's name."""
        template, inputs = [], []
        for segment in segments:
            if isinstance(segment, Text):
                template.append(segment.text.replace("{", "{{").replace("}", "}}"))
            else:
                template.append(f"{{{len(inputs)}}}")
                inputs.append(segment.var)
        node_id = self.session.new_id("lc-prompt")
        args = {"template": "".join(template)}
        self.session.add_transform(Transform(node_id, "format", tuple(inputs), node_id, args))
        return node_id

    # ---- reading -----------------------------------------------------------------------
    def known(self, var: str) -> bool:
        fetch = self._fetches.get(var)
        return fetch is not None and fetch.done() and fetch.exception() is None

    def result(self, var: str) -> VariableResult:
        """The fetched output `var` (submitting and fetching what is pending first)."""
        return self._fetch_all(var).result()

    async def aresult(self, var: str) -> VariableResult:
        return await asyncio.wrap_future(self._fetch_all(var))

    def value(self, var: str) -> str:
        return self.result(var).value

    async def avalue(self, var: str) -> str:
        return (await self.aresult(var)).value

    def stream(self, var: str) -> Iterator[str]:
        """Text deltas of output `var` as they are generated (submits what is pending)."""
        return self._variables[var].stream()

    def astream(self, var: str) -> AsyncIterator[str]:
        return self._variables[var].astream()

    def _fetch_all(self, first: str) -> Future[VariableResult]:
        """Start fetching every output not fetched yet; return the fetch of `first`."""
        if first not in self._variables:
            raise KeyError(f"{first!r} is not an output of graph scope {self.id}")
        if first not in self._fetches and not self.open:
            raise RuntimeError(f"output {first!r} was never fetched and its scope is closed")
        with self._lock:
            wanted = {
                var: "latency" if var == first else "throughput"
                for var in (first, *list(self._variables))
                if var not in self._fetches
            }
            if wanted:  # named in the submit, so that every call starts with it
                self.session.expect(wanted)
            for var, criterion in wanted.items():
                fetch = self._variables[var].aget_result(criterion)
                self._fetches[var] = self.connection.portal.submit(fetch)
            return self._fetches[first]

    def resolve_all(self) -> None:
        """Fetch every output; raise the first failure (after all finished) if raise_on_exit."""
        if self._variables:
            fetches = [self._fetch_all(v) for v in list(self._variables)]
            errors = [f.exception() for f in fetches]
            if self.raise_on_exit:
                _raise_first(errors)

    async def aresolve_all(self) -> None:
        if self._variables:
            fetches = [asyncio.wrap_future(self._fetch_all(v)) for v in list(self._variables)]
            results = await asyncio.gather(*fetches, return_exceptions=True)
            if self.raise_on_exit:
                _raise_first(results)

    # ---- lifetime ----------------------------------------------------------------------
    def __enter__(self) -> GraphScope:
        self._check_new()
        self.session.__enter__()
        self._start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self.resolve_all()
        finally:
            self._stop()
            self.session.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> GraphScope:
        self._check_new()
        await self.session.__aenter__()
        self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                await self.aresolve_all()
        finally:
            self._stop()
            await self.session.__aexit__(exc_type, exc, tb)

    def _check_new(self) -> None:
        if self._state != "new":
            raise RuntimeError("a graph scope can be entered only once")

    def _start(self) -> None:
        self._state = "open"
        self._token = _ACTIVE.set(self)

    def _stop(self) -> None:
        self._state = "closed"
        if self._token is not None:
            _ACTIVE.reset(self._token)
            self._token = None

    def __repr__(self) -> str:
        return f"GraphScope({self.id}, {self._state}, calls={len(self._variables)})"


def _raise_first(results: Sequence[Any]) -> None:
    for result in results:
        if isinstance(result, BaseException):
            raise result


def parrotlet_graph(target: Any, *, exact_prompts: bool = True) -> GraphScope:
    """A graph scope on the server of `target`: a ParrotletLLM / ChatParrotlet, a
    `parrotlet.Client` or a Connection. Use as `with` or `async with`.

    Inside it, the calls of every parrotlet model on that server become one graph: their outputs
    are SemanticText futures that flow through prompt templates into later calls (dependencies
    run server-side) and are fetched only when Python reads them. `exact_prompts=False` lets the
    server splice generated token ids into prompts (see GraphScope).
    """
    return GraphScope(connection_of(target), exact_prompts=exact_prompts)


def connection_of(target: Any) -> Connection:
    """The Connection of a parrotlet model, a parrotlet Client, or a Connection itself."""
    if isinstance(target, Connection):
        return target
    connection = getattr(target, "connection", None)
    if callable(connection):
        return connection()
    from parrotlet import Client

    if isinstance(target, Client):
        return connection_for_client(target)
    raise TypeError(
        "parrotlet_graph() takes a ParrotletLLM, ChatParrotlet, parrotlet.Client or Connection, "
        f"got {type(target).__name__}"
    )
