"""Fake EngineHandles for placement and re-queue tests: scripted loads, caches and outputs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from parrotlet.engine.logprobs import TokenLogprob
from parrotlet.engine.outputs import EngineStats, RequestOutput
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.engine.sequence import FinishReason
from parrotlet.serve.engines import EngineDiedError


def make_stats(running: int = 0, waiting: int = 0) -> EngineStats:
    return EngineStats(waiting, running, 100, 0, 16, 0, 0, 0, 0, 0)


def make_output(
    text: str, delta: str, finished: bool, logprobs: tuple[TokenLogprob, ...] = ()
) -> RequestOutput:
    reason = FinishReason.STOP if finished else None
    return RequestOutput("r", (), delta, (), text, finished, reason, 4, 0, new_logprobs=logprobs)


class FakeEngine:
    """An engine with a fixed load and cached prompt; `deltas` are streamed per request (the
    i-th with TokenLogprob(i, -i) when the request asks for logprobs), and `die_after` outputs
    into a request it raises EngineDiedError (and stays dead)."""

    def __init__(
        self,
        name: str,
        *,
        running: int = 0,
        waiting: int = 0,
        cached: Sequence[int] = (),
        deltas: Sequence[str] = ("ok",),
        die_after: int | None = None,
    ) -> None:
        self.name = name
        self.alive = True
        self._stats = make_stats(running, waiting)
        self.cached = tuple(cached)
        self.deltas = list(deltas)
        self.die_after = die_after
        self.requests: list[tuple[int, ...]] = []

    def stats(self) -> EngineStats:
        return self._stats

    def cached_prefix_len(self, prompt: Sequence[int], cache_namespace: str) -> int:
        common = 0
        for a, b in zip(prompt, self.cached, strict=False):
            if a != b:
                break
            common += 1
        return common // 16 * 16

    async def generate(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        *,
        priority: int,
        cache_namespace: str,
        group: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        if not self.alive:
            raise EngineDiedError(f"{self.name} is dead")
        self.requests.append(tuple(prompt))
        text = ""
        for i, delta in enumerate(self.deltas):
            if self.die_after is not None and i == self.die_after:
                self.alive = False
                raise EngineDiedError(f"{self.name} died")
            text += delta
            logprobs = () if params.logprobs is None else (TokenLogprob(i, -float(i)),)
            yield make_output(text, delta, i == len(self.deltas) - 1, logprobs)

    async def pin_prefix(self, prompt: Sequence[int], cache_namespace: str) -> str:
        return "pin-0"

    async def unpin(self, pin_id: str) -> None:
        pass

    async def close(self) -> None:
        pass
