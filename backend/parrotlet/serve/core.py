"""ServeCore: the serving layer's entry point — tenants' sessions, graph submission, fetches.

The HTTP app and the in-process client call these methods on the server's event loop. ServeCore
validates (GraphIndex), hands nodes to the GraphExecutor and answers gets when values are set.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING

from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.graph.index import GraphIndex, check_call
from parrotlet.graph.ir import Call, Graph, Input, Output, PerfCriterion, Text, Variable
from parrotlet.serve.config import ServeConfig
from parrotlet.serve.engines import EngineHandle, LocalEngine, ModelInfo
from parrotlet.serve.errors import GraphError, NotFoundError, ServeTimeoutError
from parrotlet.serve.executor import GraphExecutor
from parrotlet.serve.placement import PlacementConfig, Placer
from parrotlet.serve.prompt import PromptAssembler
from parrotlet.serve.registry import EngineRegistry, load_model_info
from parrotlet.serve.results import CompletionChunk, ServeStats, VariableResult
from parrotlet.serve.session import Session, VarState
from parrotlet.serve.token_cache import TokenIds

if TYPE_CHECKING:
    from parrotlet.engine.config import EngineConfig


class ServeCore:
    """Sessions of many tenants over one or more engines.

    Every method must run on the event loop that runs the engines' AsyncEngine loops. Sessions are
    visible only to the tenant that created them; an unknown session or variable is NotFoundError.
    """

    def __init__(
        self,
        engines: list[EngineHandle],
        tokenizer,
        model: ModelInfo,
        config: ServeConfig | None = None,
        *,
        owns_engines: bool = True,
        block_size: int = 16,
    ) -> None:
        self.engines = engines  # engine workers that register are added here (self.registry)
        self.owns_engines = owns_engines
        self.config = config or ServeConfig()
        self.tokenizer = tokenizer
        self.model = model
        self.model_name = model.name
        self.max_model_len = model.max_model_len
        self.assembler = PromptAssembler(tokenizer, model.eos_token_ids)
        block_size = engines[0].stats().block_size if engines else block_size
        self.registry = EngineRegistry(self.engines, model, block_size)
        placement = PlacementConfig(
            prefix_affinity=self.config.prefix_sharing, block_size=block_size
        )
        self.placer = Placer(self.engines, placement)
        self.executor = GraphExecutor(
            self.config, self.assembler, self._place, self.max_model_len, block_size
        )
        self._sessions: dict[str, Session] = {}
        self._requests: Counter[str] = Counter()
        self._ordinals = itertools.count()

    @classmethod
    def from_config(
        cls, engine_config: EngineConfig, config: ServeConfig | None = None, *, local: bool = True
    ) -> ServeCore:
        """Load the model of `engine_config` (None: the default model) into one engine; with
        `local=False` load only its tokenizer and config, and serve the engine workers that
        register (`parrotlet engine-worker`)."""
        if not local:
            tokenizer, info = load_model_info(engine_config)
            return cls([], tokenizer, info, config, block_size=engine_config.cache.block_size)
        from parrotlet.engine.async_engine import AsyncEngine
        from parrotlet.engine.engine import LLMEngine
        from parrotlet.engine.models.default_model import resolve_model_path

        engine = LLMEngine.from_config(engine_config)
        model = ModelInfo(
            resolve_model_path(engine_config.model).name,
            engine.max_model_len,
            engine.model_config.eos_token_ids,
        )
        return cls([LocalEngine(AsyncEngine(engine))], engine.tokenizer, model, config)

    async def start(self) -> None:
        """Nothing to start eagerly: engine loops start with their first request."""

    async def close(self) -> None:
        for session in list(self._sessions.values()):
            self._drop(session)
        if self.owns_engines:
            for engine in self.engines:
                await engine.close()
        await self.registry.close()

    def sibling(self, config: ServeConfig) -> ServeCore:
        """A ServeCore with other flags over the same engines (closing it leaves them running):
        benchmarks compare app-level and request-level serving on one engine."""
        return ServeCore(self.engines, self.tokenizer, self.model, config, owns_engines=False)

    # ---- sessions ------------------------------------------------------------------------
    async def create_session(
        self,
        tenant: str,
        *,
        eager: bool = False,
        graph: Graph | None = None,
        fetch: Mapping[str, str] | None = None,
    ) -> str:
        """A new session of `tenant`, with `graph` as its first increment and `fetch` as in
        `submit` (one client request); a graph that fails validation leaves no session behind."""
        self._requests["create_session"] += 1
        if fetch and graph is None:
            raise ValueError("fetch names variables of the graph submitted with it: no graph given")
        session = self._create_session(tenant, eager)
        if graph is not None:
            try:
                await self.submit(tenant, session.id, graph, fetch=fetch)
            except Exception:
                self._drop(session)
                raise
        return session.id

    def _create_session(self, tenant: str, eager: bool = False) -> Session:
        if len(self._sessions) >= self.config.max_sessions:
            raise ValueError(f"too many sessions (limit {self.config.max_sessions})")
        session_id = "s-" + secrets.token_hex(8)
        index = GraphIndex(self.config.max_graph_calls, self.config.max_variable_chars)
        session = Session(session_id, tenant, index, eager, ordinal=next(self._ordinals))
        self._sessions[session_id] = session
        return session

    def delete_session(self, tenant: str, session_id: str) -> None:
        """Cancel the session's running calls and free what it holds."""
        self._requests["delete_session"] += 1
        self._drop(self._session(tenant, session_id))

    # ---- graphs and variables ------------------------------------------------------------
    async def submit(
        self,
        tenant: str,
        session_id: str,
        graph: Graph,
        *,
        eager: bool = False,
        fetch: Mapping[str, str] | None = None,
    ) -> dict:
        """Validate and add a graph increment; with `eager` its calls start without a fetch.

        `fetch` names the variables the client is about to get, with their criteria: they are
        demanded with the graph, so what they need starts a network round trip before the gets
        arrive (a lazy session otherwise waits for them). Long texts are tokenized in a worker
        thread first; the increment is then validated and added at once.
        """
        self._requests["submit"] += 1
        session = self._session(tenant, session_id)
        demands = _fetch_criteria(session, graph, fetch or {})
        ids = await self._tokenize(session, graph)
        session = self._session(tenant, session_id)  # deleted meanwhile: NotFoundError
        self._submit(session, graph, eager, ids)
        for name, criterion in demands.items():
            self._demand(session, name, criterion)
        return {
            "calls": [c.id for c in graph.calls],
            "variables": [v.name for v in graph.variables],
        }

    async def _tokenize(self, session: Session, graph: Graph) -> dict[str, TokenIds]:
        """The ids of the texts `_check_prompt_fits` reads, tokenized off the event loop where
        long; texts past the session's size limit are refused first, untokenized."""
        session.index.check_text_sizes(graph)
        return await self.assembler.encode_all(_prompt_texts(session, graph))

    def _submit(
        self, session: Session, graph: Graph, eager: bool, ids: Mapping[str, TokenIds]
    ) -> None:
        """Add `graph` to `session`; `ids` holds the tokenized texts of its calls' prompts."""
        known = _known_values(session, graph)
        for call in graph.calls:
            self._check_prompt_fits(call, known, ids)
        session.index.add(graph)
        for var in graph.variables:
            state = session.var(var.name)
            if var.value is not None:
                state.set(var.value)
        self.executor.submitted(session, [*graph.calls, *graph.transforms], eager)

    async def set_variable(self, tenant: str, session_id: str, name: str, value: str) -> None:
        """Set a variable the client produces (tokenized first: its consumers find it cached)."""
        self._requests["set"] += 1
        self._known(self._session(tenant, session_id), name)
        if len(value) > self.config.max_variable_chars:
            raise GraphError(
                f"variable {name!r} has {len(value)} chars, limit {self.config.max_variable_chars}"
            )
        await self.assembler.encode_all([value])
        session = self._session(tenant, session_id)
        session.index.claim_for_client(name)
        session.var(name).set(value)
        self.executor.value_set(session, name, by_server=False)

    async def get_variable(
        self,
        tenant: str,
        session_id: str,
        name: str,
        *,
        criterion: PerfCriterion = PerfCriterion.LATENCY,
        timeout: float | None = None,
    ) -> VariableResult:
        """Wait for the value of `name` (running what it depends on); ServeTimeoutError after
        `timeout` seconds; GraphError if the call that produces it failed."""
        self._requests["get"] += 1
        session = self._session(tenant, session_id)
        state = self._demand(session, name, criterion)
        wait = timeout if timeout is not None else self.config.default_get_timeout_s
        try:
            await asyncio.wait_for(state.done.wait(), wait)
        except TimeoutError:
            raise ServeTimeoutError(f"variable {name!r} was not set within {wait:g} s") from None
        return _info(state)

    def stream_variable(
        self,
        tenant: str,
        session_id: str,
        name: str,
        *,
        criterion: PerfCriterion = PerfCriterion.LATENCY,
    ) -> AsyncIterator[str]:
        """Text deltas of `name` as they are generated (the whole value at once if not a call's)."""
        self._requests["stream"] += 1
        state = self._demand(self._session(tenant, session_id), name, criterion)
        return _stream(state)

    async def complete(
        self,
        tenant: str,
        prompt: str | list[int],
        params: SamplingParams,
        *,
        clip_to_context: bool = False,
    ) -> AsyncIterator[CompletionChunk]:
        """One call as a one-call graph in a throwaway session (the OpenAI endpoints).

        A prompt plus `params.max_tokens` past the model's context is a ValueError, as in vLLM
        and OpenAI; with `clip_to_context` max_tokens is only a bound, clipped to what is left.
        """
        self._requests["complete"] += 1
        session = self._create_session(tenant)
        try:
            await self._submit_completion(session, prompt, params, clip_to_context)
            state = self._demand(session, "completion", PerfCriterion.LATENCY)
            sent = 0  # logprobs handed out so far
            async for delta in _stream(state):
                logprobs, sent = tuple(state.logprobs[sent:]), len(state.logprobs)
                yield CompletionChunk(
                    delta, None, state.prompt_tokens, state.completion_tokens, (), logprobs
                )
            yield CompletionChunk(
                "",
                state.finish_reason,
                state.prompt_tokens,
                state.completion_tokens,
                tuple(state.token_ids or ()),
                tuple(state.logprobs[sent:]),
            )
        finally:
            self._drop(session)

    def stats(self) -> ServeStats:
        c = self.executor.counters
        return ServeStats(
            num_sessions=len(self._sessions),
            client_requests=dict(self._requests),
            calls_started=c.calls_started,
            calls_finished=c.calls_finished,
            calls_started_by_server=c.calls_started_by_server,
            call_latency={k: (int(v[0]), float(v[1])) for k, v in c.latency.items()},
            engines=[e.stats() for e in self.engines],
            calls_requeued=self.executor.runner.requeue.count,
        )

    # ---- internals -----------------------------------------------------------------------
    def _session(self, tenant: str, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None or session.tenant != tenant:
            raise NotFoundError(f"session {session_id!r} not found")
        return session

    def _known(self, session: Session, name: str) -> None:
        if name not in session.index.producers:
            raise NotFoundError(f"variable {name!r} not found in session {session.id!r}")

    def _demand(self, session: Session, name: str, criterion: PerfCriterion) -> VarState:
        self._known(session, name)
        self.executor.demand(session, name, PerfCriterion(criterion))
        return session.var(name)

    async def _submit_completion(
        self,
        session: Session,
        prompt: str | list[int],
        params: SamplingParams,
        clip_to_context: bool,
    ) -> None:
        call = Call("completion", (Input("prompt"), Output("completion", params)), chat=False)
        given = isinstance(prompt, str)
        graph = Graph((Variable("prompt", prompt if given else None),), (call,))
        ids = await self._tokenize(session, graph)
        num = len(ids[prompt] if given else prompt)
        self._check_completion_fits(num, None if clip_to_context else params.max_tokens)
        self._submit(session, graph, False, ids)
        if not given:
            session.index.claim_for_client("prompt")
            session.var("prompt").set(self.tokenizer.decode(prompt), list(prompt))
            self.executor.value_set(session, "prompt", by_server=False)

    def _check_completion_fits(self, num: int, max_tokens: int | None) -> None:
        """ValueError where a prompt of `num` tokens fills the context, or leaves no room for
        `max_tokens` (None: only a bound, clipped to the room left)."""
        if num >= self.max_model_len:
            raise ValueError(
                f"the prompt has {num} tokens, the model's context is {self.max_model_len}"
            )
        if max_tokens is not None and num + max_tokens > self.max_model_len:
            raise ValueError(
                f"max_tokens is {max_tokens} but the prompt has {num} tokens and the model's "
                f"context is {self.max_model_len}: at most {self.max_model_len - num} fit"
            )

    def _check_prompt_fits(
        self, call: Call, known: Mapping[str, str], ids: Mapping[str, TokenIds]
    ) -> None:
        """Reject at submit a malformed call, or one whose known text alone exceeds the model's
        context (or whose role sequence the chat template rejects); `known` holds the values
        known now, `ids` the tokenized texts."""
        check_call(call)

        def encode(text: str) -> TokenIds:  # a value set since `ids` was made: tokenized here
            return ids[text] if text in ids else self.assembler.encode(text)

        def segment_ids(seg: Text | Input) -> Sequence[int]:
            if isinstance(seg, Text):
                return encode(seg.text)
            return encode(known[seg.var]) if seg.var in known else ()

        num = len(self.assembler.prefix_ids(call, segment_ids))  # GraphError: template rejects
        seen_output = False
        for seg in call.segments:
            seen_output = seen_output or isinstance(seg, Output)
            if seen_output and isinstance(seg, Text | Input):
                num += len(segment_ids(seg))
        if num >= self.max_model_len:
            raise GraphError(
                f"call {call.id!r}: prompt has at least {num} tokens, "
                f"the model's context is {self.max_model_len}"
            )

    def _place(self, session: Session, call: Call, prompt: Sequence[int]) -> EngineHandle:
        """Which engine runs `call`: prefix affinity, load and objective (serve/placement.py)."""
        plan = session.plans.get(call.id)
        objective = plan.objective if plan is not None else PerfCriterion.THROUGHPUT
        return self.placer.place(prompt, session.tenant, objective)

    def _drop(self, session: Session) -> None:
        for task in list(session.tasks):
            task.cancel()
        for state in session.variables.values():
            state.fail("session deleted")
        self._sessions.pop(session.id, None)


def _fetch_criteria(
    session: Session, graph: Graph, fetch: Mapping[str, str]
) -> dict[str, PerfCriterion]:
    """`fetch` checked before `graph` is added: each name a variable of the session or of the
    graph, each criterion a PerfCriterion value."""
    names = graph.names
    demands = {}
    for name, criterion in fetch.items():
        if name not in names and name not in session.index.producers:
            raise NotFoundError(f"fetched variable {name!r} is in neither the graph nor "
                                f"session {session.id!r}")  # fmt: skip
        try:
            demands[name] = PerfCriterion(criterion)
        except ValueError:
            choices = ", ".join(repr(c.value) for c in PerfCriterion)
            raise ValueError(f"criterion {criterion!r} of fetched variable {name!r} is not "
                             f"one of {choices}") from None  # fmt: skip
    return demands


def _known_values(session: Session, graph: Graph) -> dict[str, str]:
    """Values known at submit: the graph's given values and the session's set variables."""
    known = {v.name: v.value for v in graph.variables if v.value is not None}
    for name, state in session.variables.items():
        if state.value is not None:
            known[name] = state.value
    return known


def _prompt_texts(session: Session, graph: Graph) -> list[str]:
    """The texts that `_check_prompt_fits` tokenizes: the calls' text segments and the known
    values of their inputs."""
    known = _known_values(session, graph)
    texts = []
    for call in graph.calls:
        for segment in call.segments:
            if isinstance(segment, Text):
                texts.append(segment.text)
            elif isinstance(segment, Input) and segment.var in known:
                texts.append(known[segment.var])
    return texts


def _info(state: VarState) -> VariableResult:
    if state.error is not None:
        raise GraphError(f"variable {state.name!r} could not be produced: {state.error}")
    assert state.value is not None
    return VariableResult(state.name, state.value, state.finish_reason, state.prompt_tokens,
                          state.completion_tokens, tuple(state.logprobs))  # fmt: skip


async def _stream(state: VarState) -> AsyncIterator[str]:
    queue = state.listen()
    while (delta := await queue.get()) is not None:
        yield delta
    _info(state)  # raise if it failed
