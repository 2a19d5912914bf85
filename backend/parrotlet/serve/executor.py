"""GraphExecutor: runs a session's calls and transforms as their inputs become set, on the server.

Event-driven: a node starts when it is demanded (a fetched sink needs it, or the session is eager)
and its inputs are set; when it finishes, its outputs are set and its consumers start at once,
with no client round trip. Calls stream through an engine; transforms are pure string functions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from parrotlet.engine.outputs import RequestOutput
from parrotlet.graph.index import Node
from parrotlet.graph.ir import Call, Input, Output, PerfCriterion, Text, Transform
from parrotlet.graph.transforms import apply_transform
from parrotlet.serve.config import ServeConfig
from parrotlet.serve.engines import EngineHandle
from parrotlet.serve.prompt import PromptAssembler
from parrotlet.serve.session import Session

logger = logging.getLogger(__name__)

_PRIORITY = {PerfCriterion.LATENCY: 0, PerfCriterion.THROUGHPUT: 1}


@dataclass
class ExecutorCounters:
    calls_started: int = 0
    calls_finished: int = 0
    calls_started_by_server: int = 0  # started because an input was produced on the server
    latency: dict[str, list[float]] = field(default_factory=dict)  # objective -> [count, seconds]


class GraphExecutor:
    """Starts ready, demanded nodes; places each call on an engine via `place`."""

    def __init__(
        self,
        config: ServeConfig,
        assembler: PromptAssembler,
        place: Callable[[Session, Call], EngineHandle],
        max_model_len: int,
    ) -> None:
        self.config = config
        self.assembler = assembler
        self.place = place
        self.max_model_len = max_model_len
        self.counters = ExecutorCounters()

    # ---- entry points --------------------------------------------------------------------
    def submitted(self, session: Session, nodes: list[Node], eager: bool) -> None:
        """New nodes arrived: run them now if eager, else wait for a fetch to demand them."""
        if eager or session.eager or not self.config.lazy:
            for node in nodes:
                self._demand_node(session, node.id, PerfCriterion.THROUGHPUT)
        for node in nodes:
            self._maybe_start(session, node.id, by_server=False)

    def demand(self, session: Session, var: str, criterion: PerfCriterion) -> None:
        """The client fetches `var`: every node it depends on must run (with that objective)."""
        state = session.var(var)
        if state.demand is None or criterion is PerfCriterion.LATENCY:
            state.demand = criterion
        producer = session.index.producers.get(var, "")
        if producer in session.index.nodes:
            self._demand_node(session, producer, criterion)

    def value_set(self, session: Session, var: str, by_server: bool) -> None:
        """`var` got its value: start the consumers that were waiting for it."""
        for node_id in session.index.consumers.get(var, ()):
            self._maybe_start(session, node_id, by_server)

    # ---- scheduling ----------------------------------------------------------------------
    def _demand_node(self, session: Session, node_id: str, criterion: PerfCriterion) -> None:
        """Mark `node_id` and its unfinished ancestors demanded; start those that are ready."""
        stack = [node_id]
        while stack:
            nid = stack.pop()
            known = session.objectives.get(nid)
            if known is PerfCriterion.LATENCY or known is criterion:
                continue  # demanded already, with an objective at least as urgent
            session.objectives[nid] = criterion
            for var in session.index.nodes[nid].inputs:
                parent = session.index.producers.get(var, "")
                if parent in session.index.nodes:
                    stack.append(parent)
            self._maybe_start(session, nid, by_server=False)

    def _maybe_start(self, session: Session, node_id: str, by_server: bool) -> None:
        if node_id in session.started or node_id not in session.objectives:
            return
        node = session.index.nodes[node_id]
        inputs = [session.var(v) for v in node.inputs]
        if not all(v.is_set for v in inputs):
            return
        session.started.add(node_id)
        failed = next((v for v in inputs if v.error is not None), None)
        if failed is not None:
            self._fail(session, node, f"input {failed.name!r} failed: {failed.error}")
        elif isinstance(node, Transform):
            self._run_transform(session, node)
        else:
            self.counters.calls_started += 1
            self.counters.calls_started_by_server += by_server
            task = asyncio.get_running_loop().create_task(self._run_call(session, node))
            session.tasks.add(task)
            task.add_done_callback(session.tasks.discard)

    def _run_transform(self, session: Session, node: Transform) -> None:
        values = [session.var(v).value or "" for v in node.inputs]
        try:
            result = apply_transform(node, values)
        except ValueError as exc:
            self._fail(session, node, str(exc))
            return
        session.var(node.output).set(result)
        self.value_set(session, node.output, by_server=True)

    def _fail(self, session: Session, node: Node, error: str) -> None:
        outputs = node.outputs if isinstance(node, Call) else (node.output,)
        for var in outputs:
            session.var(var).fail(error)
            self.value_set(session, var, by_server=True)

    # ---- calls ---------------------------------------------------------------------------
    async def _run_call(self, session: Session, call: Call) -> None:
        started = time.perf_counter()
        objective = session.objectives[call.id]
        try:
            await self._generate_outputs(session, call, objective)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one failed call fails its outputs, never the server
            logger.warning("call %s failed: %s", call.id, exc)
            self._fail(session, call, str(exc))
            return
        self.counters.calls_finished += 1
        count_seconds = self.counters.latency.setdefault(objective.value, [0, 0.0])
        count_seconds[0] += 1
        count_seconds[1] += time.perf_counter() - started

    async def _generate_outputs(
        self, session: Session, call: Call, objective: PerfCriterion
    ) -> None:
        ids: list[int] = list(self.assembler.chat_head) if call.chat else []
        first_output = True
        for segment in call.segments:
            if isinstance(segment, Text):
                ids.extend(self.assembler.encode(segment.text))
            elif isinstance(segment, Input):
                ids.extend(self._input_ids(session, segment.var))
            else:
                if call.chat and first_output:
                    ids.extend(self.assembler.chat_tail)
                first_output = False
                ids.extend(await self._generate(session, call, segment, ids, objective))

    def _input_ids(self, session: Session, var: str) -> list[int]:
        state = session.var(var)
        if state.token_ids is not None:
            return state.token_ids
        return list(self.assembler.encode(state.value or ""))

    async def _generate(
        self,
        session: Session,
        call: Call,
        segment: Output,
        prompt: list[int],
        objective: PerfCriterion,
    ) -> list[int]:
        """Generate one output variable; return the ids to continue the prompt with."""
        room = self.max_model_len - len(prompt)
        if room <= 0:
            raise ValueError(
                f"call {call.id!r}: prompt has {len(prompt)} tokens, "
                f"the model's context is {self.max_model_len}"
            )
        params = segment.sampling
        if params.max_tokens > room:
            params = replace(params, max_tokens=room)
        state = session.var(segment.var)
        engine = self.place(session, call)
        priority = _PRIORITY[objective] if self.config.app_scheduling else 0
        final: RequestOutput | None = None
        async for final in engine.generate(
            prompt, params, priority=priority, cache_namespace=session.tenant
        ):
            state.push(final.text_delta)
        assert final is not None
        if final.error:
            raise RuntimeError(final.error)
        state.finish_reason = final.finish_reason.value if final.finish_reason else None
        state.prompt_tokens, state.completion_tokens = len(prompt), len(final.token_ids)
        spliced = self.assembler.spliceable_ids(final.text, final.token_ids)
        state.set(final.text, spliced)
        self.value_set(session, segment.var, by_server=True)
        return spliced if spliced is not None else list(self.assembler.encode(final.text))
