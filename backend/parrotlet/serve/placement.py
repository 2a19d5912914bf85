"""Placement: which engine runs a ready call — prefix affinity first, then load, shaded by the
call's objective. ServeCore's `_place` delegates here; the CallRunner asks with the prompt ids.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from parrotlet.engine.outputs import EngineStats, RequestOutput
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.graph.ir import PerfCriterion
from parrotlet.serve.engine_wire import empty_stats
from parrotlet.serve.engines import EngineDiedError, EngineHandle
from parrotlet.serve.prefix_index import PrefixIndex


@dataclass(frozen=True)
class PlacementConfig:
    """How placement trades prefix affinity against load.

    A call goes to the engine holding the longest prefix of its prompt (cached there, or sent
    there in the last `sticky_ttl_s` seconds, so calls submitted together stick together before
    anything is cached) when that prefix is at least `min_affinity_ratio` of the prompt and that
    engine is not overloaded: it is when it carries more than `balance_abs` (`latency_balance_abs`
    for latency-critical calls) requests above the least loaded engine AND more than
    `balance_rel` times its load. Otherwise the least loaded engine wins. Load is running +
    waiting requests, where waiting ones weigh `latency_queue_weight` for latency-critical calls,
    plus placements of the last `settle_s` seconds (engine stats lag placements by up to a step,
    or a heartbeat for remote engines).
    """

    prefix_affinity: bool = True
    min_affinity_ratio: float = 0.5
    balance_abs: float = 16.0
    balance_rel: float = 2.0
    latency_balance_abs: float = 4.0
    latency_queue_weight: float = 2.0
    sticky_ttl_s: float = 10.0
    settle_s: float = 1.0
    block_size: int = 16

    def __post_init__(self) -> None:
        if not 0.0 < self.min_affinity_ratio <= 1.0:
            raise ValueError(f"min_affinity_ratio must be in (0, 1], got {self.min_affinity_ratio}")
        for name in ("balance_abs", "latency_balance_abs", "sticky_ttl_s", "settle_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.balance_rel < 1.0 or self.latency_queue_weight < 1.0:
            raise ValueError("balance_rel and latency_queue_weight must be >= 1")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")


@dataclass(frozen=True)
class Candidate:
    """A live engine as placement sees it: its load and how many prompt tokens it holds."""

    load: float
    match: int


def choose(
    candidates: Sequence[Candidate], prompt_len: int, latency: bool, config: PlacementConfig
) -> int:
    """The index of the candidate to run a call on (ties go to the earlier candidate)."""
    order = range(len(candidates))
    least = min(order, key=lambda i: (candidates[i].load, -candidates[i].match, i))
    if not config.prefix_affinity or prompt_len == 0:
        return least
    best = min(order, key=lambda i: (-candidates[i].match, candidates[i].load, i))
    held, lightest = candidates[best], candidates[least]
    if held.match == 0 or held.match < config.min_affinity_ratio * prompt_len:
        return least
    limit = config.latency_balance_abs if latency else config.balance_abs
    if held.load - lightest.load > limit and held.load > config.balance_rel * lightest.load:
        return least
    return best


class Placer:
    """Places calls on the live engines of `engines` (a list others may add to or remove from).

    Remembers, per engine, the prompts it placed there recently (the sticky rule) and when.
    """

    def __init__(
        self,
        engines: list[EngineHandle],
        config: PlacementConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engines = engines
        self.config = config or PlacementConfig()
        self._clock = clock
        self._sent: dict[str, PrefixIndex] = {}
        self._placed_at: dict[str, deque[float]] = {}

    def place(
        self, prompt: Sequence[int], cache_namespace: str, objective: PerfCriterion
    ) -> EngineHandle:
        """The engine to run a call with this prompt. With no live engine: UNPLACED, whose
        requests raise EngineDiedError, so the call waits in the re-queue loop for an engine."""
        live = [e for e in self.engines if e.alive]
        if not live:
            return UNPLACED
        latency = objective is PerfCriterion.LATENCY
        candidates = [
            Candidate(self._load(e, latency), self._match(e, prompt, cache_namespace)) for e in live
        ]
        engine = live[choose(candidates, len(prompt), latency, self.config)]
        self._note(engine, prompt, cache_namespace)
        return engine

    def _load(self, engine: EngineHandle, latency: bool) -> float:
        stats = engine.stats()
        queued = stats.num_waiting + len(self._recent(engine.name))
        weight = self.config.latency_queue_weight if latency else 1.0
        return stats.num_running + weight * queued

    def _match(self, engine: EngineHandle, prompt: Sequence[int], namespace: str) -> int:
        if not self.config.prefix_affinity:
            return 0
        sent = self._sent.get(engine.name)
        recent = sent.match_len(prompt, namespace) if sent is not None else 0
        return max(recent, engine.cached_prefix_len(prompt, namespace))

    def _recent(self, name: str) -> deque[float]:
        """Times of this engine's placements in the last `settle_s` seconds."""
        times = self._placed_at.setdefault(name, deque())
        now = self._clock()
        while times and now - times[0] > self.config.settle_s:
            times.popleft()
        return times

    def _note(self, engine: EngineHandle, prompt: Sequence[int], namespace: str) -> None:
        self._forget_gone_engines()
        self._recent(engine.name).append(self._clock())
        if self.config.prefix_affinity:
            if engine.name not in self._sent:
                self._sent[engine.name] = PrefixIndex(
                    self.config.block_size, ttl_s=self.config.sticky_ttl_s, clock=self._clock
                )
            self._sent[engine.name].record(prompt, namespace)

    def _forget_gone_engines(self) -> None:
        names = {e.name for e in self.engines}
        for table in (self._sent, self._placed_at):
            for name in [n for n in table if n not in names]:
                del table[name]


class Unplaced:
    """The engine handle of a call placed while no engine was alive: never alive, and every
    request raises EngineDiedError (the Requeuer then waits for a live engine)."""

    name = "unplaced"
    alive = False

    async def generate(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        *,
        priority: int,
        cache_namespace: str,
        group: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        raise EngineDiedError("no live engine")
        yield  # an async generator, like the real handles

    async def pin_prefix(self, prompt: Sequence[int], cache_namespace: str) -> str:
        raise EngineDiedError("no live engine")

    async def unpin(self, pin_id: str) -> None:
        pass

    def cached_prefix_len(self, prompt: Sequence[int], cache_namespace: str) -> int:
        return 0

    def stats(self) -> EngineStats:
        return empty_stats(1)

    async def close(self) -> None:
        pass


UNPLACED = Unplaced()
