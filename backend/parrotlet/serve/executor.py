"""GraphExecutor: runs a session's calls and transforms as their inputs become set, on the server.

Event-driven: a node starts when it is needed (a fetched sink depends on it, or it was submitted
eagerly) and its inputs are set; when it finishes, its outputs are set and its consumers start at
once, with no client round trip. Fetches re-deduce objectives and task groups; calls that become
ready in the same event-loop pass are checked for a shared prompt prefix before they launch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from parrotlet.graph.index import Node
from parrotlet.graph.ir import Call, PerfCriterion, Transform
from parrotlet.graph.transforms import OFF_LOOP_OPS, apply_transform
from parrotlet.serve.call_runner import CallRunner, Place
from parrotlet.serve.config import ServeConfig
from parrotlet.serve.objectives import CallPlan, deduce
from parrotlet.serve.prefix_sharing import SharedPrefix, find_shares
from parrotlet.serve.prompt import OFF_LOOP_CHARS, PromptAssembler
from parrotlet.serve.session import Session

logger = logging.getLogger(__name__)

_EAGER = CallPlan(PerfCriterion.THROUGHPUT)


@dataclass
class ExecutorCounters:
    calls_started: int = 0
    calls_finished: int = 0
    calls_started_by_server: int = 0  # started because an input was produced on the server
    prefixes_shared: int = 0  # shared prefixes prefilled once for several calls
    latency: dict[str, list[float]] = field(default_factory=dict)  # objective -> [count, seconds]


class GraphExecutor:
    """Starts ready, needed nodes; calls run through a CallRunner on the engines `place` picks."""

    def __init__(
        self,
        config: ServeConfig,
        assembler: PromptAssembler,
        place: Place,
        max_model_len: int,
        block_size: int = 16,
    ) -> None:
        self.config = config
        self.block_size = block_size
        self.runner = CallRunner(
            assembler, place, max_model_len, config.app_scheduling, self._output_set
        )
        self.counters = ExecutorCounters()
        self._ready: list[tuple[Session, Call, bool]] = []
        self._settled: deque[tuple[Session, str, bool]] = deque()  # values whose consumers wait
        self._draining = False

    # ---- entry points --------------------------------------------------------------------
    def submitted(self, session: Session, nodes: list[Node], eager: bool) -> None:
        """New nodes arrived: run them now if eager, else wait for a fetch to need them."""
        if eager or session.eager or not self.config.lazy:
            session.eager_nodes.update(n.id for n in nodes)
        self._replan(session)

    def demand(self, session: Session, var: str, criterion: PerfCriterion) -> None:
        """The client fetches `var`: what it depends on must run, with that objective."""
        session.fetched[var] = criterion.joined(session.fetched.get(var))
        self._replan(session)

    def value_set(self, session: Session, var: str, by_server: bool) -> None:
        """`var` got its value: start the consumers that were waiting for it.

        Iterative: a transform that runs at once sets its output from inside this call, and a
        chain of thousands of them must not nest a call per link (Python's recursion limit).
        """
        self._settled.append((session, var, by_server))
        if self._draining:
            return  # the loop below, further up the stack, takes it
        self._draining = True
        try:
            while self._settled:
                session, var, by_server = self._settled.popleft()
                for node_id in session.index.consumers.get(var, ()):
                    self._maybe_start(session, node_id, by_server)
        finally:
            self._draining = False
            self._settled.clear()  # empty unless a consumer raised

    # ---- planning and starting -----------------------------------------------------------
    def _replan(self, session: Session) -> None:
        plans = deduce(session.index, session.fetched)
        for nid in session.eager_nodes:
            plans.setdefault(nid, _EAGER)
        session.plans = plans
        for nid in plans:
            self._maybe_start(session, nid, by_server=False)

    def _maybe_start(self, session: Session, node_id: str, by_server: bool) -> None:
        if node_id in session.started or node_id not in session.plans:
            return
        node = session.index.nodes[node_id]
        inputs = [session.var(v) for v in node.inputs]
        if not all(v.is_set for v in inputs):
            return
        session.started.add(node_id)
        failed = next((v for v in inputs if v.error is not None), None)
        if failed is not None:  # its root cause, not the whole chain: one line however long
            self._fail(session, node, f"input {failed.name!r} failed: {failed.cause}", failed.cause)
        elif isinstance(node, Transform):
            self._run_transform(session, node)
        else:
            self.counters.calls_started += 1
            self.counters.calls_started_by_server += by_server
            if not self._ready:
                asyncio.get_running_loop().call_soon(self._launch_ready)
            self._ready.append((session, node, by_server))

    def _launch_ready(self) -> None:
        """Launch the calls that became ready in this pass, grouping shared prompt prefixes."""
        ready, self._ready = self._ready, []
        prefixes = {(s.id, c.id): self.runner.prompt_prefix(s, c) for s, c, _ in ready}
        shares: dict[tuple[str, str], SharedPrefix] = {}
        if self.config.prefix_sharing and len(ready) > 1:
            prompts = [((s.id, c.id), s.tenant, prefixes[(s.id, c.id)]) for s, c, _ in ready]
            for share in find_shares(prompts, self.block_size, 2 * self.block_size):
                self.counters.prefixes_shared += 1
                shares.update((member, share) for member in share.members)
        for session, call, _ in ready:
            key = (session.id, call.id)
            _spawn(session, self._run_call(session, call, prefixes[key], shares.get(key)))

    def _run_transform(self, session: Session, node: Transform) -> None:
        values = [session.var(v).value or "" for v in node.inputs]
        if node.op in OFF_LOOP_OPS:
            _spawn(session, self._run_off_loop(session, node, values))
            return
        try:
            result = apply_transform(node, values, session.index.max_value_chars)
        except ValueError as exc:
            self._fail(session, node, str(exc))
            return
        self._transformed(session, node, result)

    async def _run_off_loop(self, session: Session, node: Transform, values: list[str]) -> None:
        """A transform that may run long (a regex, up to its time limit) in a worker thread."""
        limit = session.index.max_value_chars
        try:
            result = await asyncio.to_thread(apply_transform, node, values, limit)
        except ValueError as exc:
            self._fail(session, node, str(exc))
            return
        self._transformed(session, node, result)

    def _transformed(self, session: Session, node: Transform, result: str) -> None:
        if len(result) > OFF_LOOP_CHARS and self._feeds_a_call(session, node.output):
            _spawn(session, self._tokenize_then_set(session, node.output, result))
            return
        session.var(node.output).set(result)
        self.value_set(session, node.output, by_server=True)

    async def _tokenize_then_set(self, session: Session, var: str, result: str) -> None:
        """A long output that calls read is tokenized off the loop first: their prompts are then
        assembled from the cache."""
        await self.runner.assembler.encode_all([result])
        session.var(var).set(result)
        self.value_set(session, var, by_server=True)

    @staticmethod
    def _feeds_a_call(session: Session, var: str) -> bool:
        nodes = session.index.nodes
        return any(isinstance(nodes[n], Call) for n in session.index.consumers.get(var, ()))

    def _fail(self, session: Session, node: Node, error: str, cause: str | None = None) -> None:
        outputs = node.outputs if isinstance(node, Call) else (node.output,)
        for var in outputs:
            session.var(var).fail(error, cause)
            self.value_set(session, var, by_server=True)

    def _output_set(self, session: Session, var: str) -> None:
        self.value_set(session, var, by_server=True)

    # ---- calls ---------------------------------------------------------------------------
    async def _run_call(
        self, session: Session, call: Call, prefix: list[int], share: SharedPrefix | None
    ) -> None:
        started = time.perf_counter()
        plan = session.plans.get(call.id, _EAGER)
        try:
            await self.runner.run(session, call, plan, prefix, share)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one failed call fails its outputs, never the server
            logger.warning("call %s failed: %s", call.id, exc)
            self._fail(session, call, str(exc))
            return
        finally:
            if share is not None:
                await _leave(share)
        self.counters.calls_finished += 1
        count_seconds = self.counters.latency.setdefault(plan.objective.value, [0, 0.0])
        count_seconds[0] += 1
        count_seconds[1] += time.perf_counter() - started


def _spawn(session: Session, work: Coroutine[Any, Any, None]) -> None:
    """Run `work` as a task of `session` (deleting the session cancels it)."""
    task = asyncio.get_running_loop().create_task(work)
    session.tasks.add(task)
    task.add_done_callback(session.tasks.discard)


async def _leave(share: SharedPrefix) -> None:
    """The last member of a shared prefix to finish releases its pin."""
    share.remaining -= 1
    if share.remaining == 0 and share.engine is not None and share.pin_id is not None:
        await share.engine.unpin(share.pin_id)
