"""Session state: one application instance's graph index, variable states and running calls.

ServeCore owns the sessions; the GraphExecutor reads and writes VarState as calls and transforms
produce values. Everything here lives on the server's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from parrotlet.engine.logprobs import TokenLogprob
from parrotlet.graph.index import GraphIndex
from parrotlet.graph.ir import PerfCriterion
from parrotlet.serve.objectives import CallPlan


class VarState:
    """One Semantic Variable: its value once set, its token ids, and the text streamed so far.

    `token_ids` are the ids the value was generated as (spliced into consumers' prompts without a
    detokenize/retokenize round trip); None means the value is tokenized where it is used.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.value: str | None = None
        self.token_ids: list[int] | None = None
        self.error: str | None = None
        self.cause: str | None = None  # the error where a chain of failed inputs began
        self.finish_reason: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.demand: PerfCriterion | None = None  # set when the client fetches it
        self.done = asyncio.Event()
        self.logprobs: list[TokenLogprob] = []  # its tokens', when the call asked for them
        self._streamed: list[str] = []
        self._listeners: list[asyncio.Queue[str | None]] = []

    @property
    def is_set(self) -> bool:
        return self.done.is_set()

    def push(self, delta: str, logprobs: Sequence[TokenLogprob] = ()) -> None:
        """Stream a piece of the value while it is being generated (and the logprobs of the
        tokens generated since the last piece; readers take them from `logprobs`)."""
        self.logprobs.extend(logprobs)
        if delta:
            self._streamed.append(delta)
            for queue in self._listeners:
                queue.put_nowait(delta)

    def set(self, value: str, token_ids: list[int] | None = None) -> None:
        """Set the final value (once); listeners get whatever was not streamed yet."""
        assert not self.is_set, f"variable {self.name!r} set twice"
        self.value, self.token_ids = value, token_ids
        streamed = "".join(self._streamed)
        rest = value[len(streamed) :] if value.startswith(streamed) else value
        self.push(rest)
        self._finish()

    def fail(self, error: str, cause: str | None = None) -> None:
        if not self.is_set:
            self.error, self.cause = error, cause or error
            self._finish()

    def listen(self) -> asyncio.Queue[str | None]:
        """A queue that gets every delta from the start, then None when the value is final."""
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        for delta in self._streamed:
            queue.put_nowait(delta)
        if self.is_set:
            queue.put_nowait(None)
        else:
            self._listeners.append(queue)
        return queue

    def _finish(self) -> None:
        self.done.set()
        for queue in self._listeners:
            queue.put_nowait(None)
        self._listeners.clear()


@dataclass(eq=False)
class Session:
    """The graph of one app instance, owned by one tenant."""

    id: str
    tenant: str
    index: GraphIndex
    eager: bool = False
    variables: dict[str, VarState] = field(default_factory=dict)
    ordinal: int = 0  # creation order: apps in progress go before newer ones
    fetched: dict[str, PerfCriterion] = field(default_factory=dict)  # sinks the client fetched
    eager_nodes: set[str] = field(default_factory=set)  # submitted to run without a fetch
    plans: dict[str, CallPlan] = field(default_factory=dict)  # every needed node -> its plan
    started: set[str] = field(default_factory=set)  # node ids already running or done
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def var(self, name: str) -> VarState:
        if name not in self.variables:
            self.variables[name] = VarState(name)
        return self.variables[name]
