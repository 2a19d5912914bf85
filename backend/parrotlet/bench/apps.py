"""One application instance run two ways on the same ServeCore engines.

App-level: the whole graph is submitted at once and its sinks fetched (parrotlet). Request-level:
a client issues each call as its own completion request once it holds the call's inputs, as apps
on a per-request API do (vLLM's OpenAI server): FCFS, prefix caching on, and an injectable network
delay per request. Both build every prompt from the same token ids (text tokenized the same way,
generated ids spliced by the same rule), so the two modes compute exactly the same tokens.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from parrotlet.engine.outputs import EngineStats
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.graph.ir import Call, Graph, Input, Output, PerfCriterion, Text, Transform
from parrotlet.graph.transforms import apply_transform
from parrotlet.serve.config import ServeConfig
from parrotlet.serve.core import ServeCore

logger = logging.getLogger(__name__)

PARROTLET = ServeConfig()
"""Every app-level optimization on: lazy graph execution, objectives and task groups, prefix
sharing. Ablations switch one flag off."""
REQUEST_LEVEL = ServeConfig(lazy=False, app_scheduling=False, prefix_sharing=False)
"""What a per-request API does: FCFS, no graph knowledge; the engine's prefix cache stays on."""


def fixed_length(num_tokens: int) -> SamplingParams:
    """Greedy output of exactly `num_tokens` tokens (EOS ignored): every variant does equal work."""
    return SamplingParams(temperature=0.0, max_tokens=num_tokens, ignore_eos=True)


@dataclass(frozen=True)
class App:
    """One app instance: its graph, the sinks it fetches, and its arrival (seconds from start)."""

    graph: Graph
    fetch: dict[str, PerfCriterion]
    arrival: float = 0.0
    kind: str = "app"

    @property
    def output_tokens(self) -> int:
        """Tokens its calls generate (outputs have fixed lengths: EOS is ignored)."""
        return sum(
            s.sampling.max_tokens
            for c in self.graph.calls
            for s in c.segments
            if isinstance(s, Output)
        )


@dataclass
class AppResult:
    """How one app instance ran: latency from its arrival to its last fetched value."""

    kind: str
    latency: float
    output_tokens: int
    outputs: dict[str, str] = field(default_factory=dict)
    requests: int = 0  # client -> server requests it made

    @property
    def per_token_latency(self) -> float:
        return self.latency / max(1, self.output_tokens)


async def run_apps(
    core: ServeCore, apps: Sequence[App], tenant: str, *, request_level: bool, delay: float = 0.0
) -> list[AppResult]:
    """Run `apps`, each starting at its arrival time; `delay` is paid per client request."""
    start = time.perf_counter()

    async def one(app: App) -> AppResult:
        await asyncio.sleep(max(0.0, start + app.arrival - time.perf_counter()))
        run = run_request_level if request_level else run_app_level
        return await run(core, app, tenant, delay)

    results = list(await asyncio.gather(*(one(app) for app in apps)))
    mode = "request-level" if request_level else "app-level"
    logger.info("%s: %d apps %s in %.2f s", tenant, len(apps), mode, time.perf_counter() - start)
    return results


def engine_counts(before: EngineStats, after: EngineStats) -> dict[str, float]:
    """What an engine did between two `stats()`: tokens computed and found cached; steps, those
    that replayed a decode CUDA graph, those with prefix tiles and those that replayed piecewise
    graphs; seconds inside its steps and, of those, waiting for the device (the rest is host
    work; the rest of the run's time the serving loop had the engine idle)."""
    fields = dict(
        computed_tokens="num_computed_tokens", cached_tokens="num_cached_prompt_tokens",
        steps="num_steps", graph_steps="num_graph_steps", tiled_steps="num_tiled_steps",
        piecewise_steps="num_piecewise_steps",
        step_s="step_us", device_wait_s="device_wait_us",
    )  # fmt: skip
    counts = {key: getattr(after, f) - getattr(before, f) for key, f in fields.items()}
    return counts | {k: counts[k] / 1e6 for k in ("step_s", "device_wait_s")}


async def run_app_level(core: ServeCore, app: App, tenant: str, delay: float) -> AppResult:
    """Submit the whole graph and the sinks it will fetch in one request, then fetch every sink
    in one round trip for all; the graph runs from the first request on, so the second round
    trip overlaps its compute (what the Python client does on its first fetch)."""
    start = time.perf_counter()
    await asyncio.sleep(delay)
    session = await core.create_session(tenant, graph=app.graph, fetch=app.fetch)
    await asyncio.sleep(delay)
    results = await asyncio.gather(
        *(core.get_variable(tenant, session, var, criterion=c) for var, c in app.fetch.items())
    )
    latency = time.perf_counter() - start
    core.delete_session(tenant, session)
    outputs = {r.name: r.value for r in results}
    return AppResult(app.kind, latency, app.output_tokens, outputs, requests=2)


async def run_request_level(core: ServeCore, app: App, tenant: str, delay: float) -> AppResult:
    """Issue each call as its own request once its inputs are known; transforms run in the app."""
    start = time.perf_counter()
    client = _RequestLevelClient(core, tenant, delay, app.graph)
    await asyncio.gather(
        *(client.run_call(c) for c in app.graph.calls),
        *(client.run_transform(t) for t in app.graph.transforms),
    )
    latency = time.perf_counter() - start
    outputs = {var: client.values[var].result()[0] for var in app.fetch}
    return AppResult(app.kind, latency, app.output_tokens, outputs, requests=client.requests)


class _RequestLevelClient:
    """The app's side of request-level serving: values as (text, ids) futures per variable."""

    def __init__(self, core: ServeCore, tenant: str, delay: float, graph: Graph) -> None:
        self.core, self.tenant, self.delay = core, tenant, delay
        self.requests = 0
        loop = asyncio.get_running_loop()
        self.values: dict[str, asyncio.Future[tuple[str, tuple[int, ...] | None]]] = {
            name: loop.create_future() for name in graph.names
        }
        for var in graph.variables:
            if var.value is not None:
                self.values[var.name].set_result((var.value, None))

    async def run_call(self, call: Call) -> None:
        assembler = self.core.assembler
        first = next(i for i, s in enumerate(call.segments) if isinstance(s, Output))
        for segment in call.segments[:first]:  # the prefix needs all its inputs
            if isinstance(segment, Input):
                await self.values[segment.var]
        ids = assembler.prefix_ids(call, self._ids)  # the same assembly as the server's
        for segment in call.segments[first:]:
            if isinstance(segment, Output):
                text, token_ids = await self._complete(ids, segment)
                self.values[segment.var].set_result((text, token_ids))
                ids.extend(token_ids if token_ids is not None else assembler.encode(text))
            else:
                if isinstance(segment, Input):
                    await self.values[segment.var]
                ids.extend(self._ids(segment))

    def _ids(self, segment: Text | Input) -> Sequence[int]:
        """A segment's ids (an Input's value must be known): generated ids spliced as is."""
        if isinstance(segment, Text):
            return self.core.assembler.encode(segment.text)
        text, token_ids = self.values[segment.var].result()
        return token_ids if token_ids is not None else self.core.assembler.encode(text)

    async def run_transform(self, transform: Transform) -> None:
        inputs = [(await self.values[v])[0] for v in transform.inputs]
        text = apply_transform(transform, inputs, sys.maxsize)  # a client has no server limit
        self.values[transform.output].set_result((text, None))

    async def _complete(
        self, prompt: list[int], output: Output
    ) -> tuple[str, tuple[int, ...] | None]:
        """One completion request (a network round trip of `delay`)."""
        self.requests += 1
        await asyncio.sleep(self.delay)
        pieces, final = [], None
        async for chunk in self.core.complete(self.tenant, prompt, output.sampling):
            pieces.append(chunk.text)
            final = chunk
        assert final is not None and final.finish_reason is not None
        return "".join(pieces), (final.token_ids or None)
