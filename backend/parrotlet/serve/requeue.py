"""Re-queue: the CallRunner streams each output through `Requeuer.generate`; when the engine dies
mid-call, the output restarts from scratch on another live engine chosen by placement.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from parrotlet.engine.logprobs import TokenLogprob
from parrotlet.engine.outputs import RequestOutput
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.serve.engines import EngineDiedError, EngineHandle

logger = logging.getLogger(__name__)


class Requeuer:
    """Runs one output on an engine, re-placing it up to `max_requeues` times if engines die.

    Text already pushed to the variable's listeners is not pushed again: a restarted output only
    pushes what it generates beyond that text, and only while its text starts with it (always so
    with greedy or seeded sampling; otherwise listeners keep the abandoned text and the final
    value, which is the restarted output's, is pushed in full when set). `count` is the number of
    re-queues. With no live engine, it waits up to `wait_for_engine_s` for one to (re)register.
    """

    def __init__(
        self, max_requeues: int = 3, wait_for_engine_s: float = 30.0, poll_s: float = 0.1
    ) -> None:
        self.max_requeues = max_requeues
        self.wait_for_engine_s = wait_for_engine_s
        self.poll_s = poll_s
        self.count = 0

    async def generate(
        self,
        engine: EngineHandle,
        place_again: Callable[[], EngineHandle],
        prompt: Sequence[int],
        params: SamplingParams,
        push: Callable[[str, Sequence[TokenLogprob]], None],
        *,
        priority: int,
        cache_namespace: str,
        group: str | None = None,
    ) -> RequestOutput:
        """The finished output; EngineDiedError once re-queues or the wait are exhausted.
        `push` gets the text and logprobs past those of earlier attempts."""
        streamed, num_logprobs = "", 0
        for attempt in range(self.max_requeues + 1):
            if not engine.alive:
                engine = await self._live_engine(place_again)
            text, logprobs, final = "", [], None
            try:
                async for final in engine.generate(
                    prompt, params, priority=priority, cache_namespace=cache_namespace, group=group
                ):
                    text += final.text_delta
                    logprobs += final.new_logprobs
                    new_text = len(text) > len(streamed) and text.startswith(streamed)
                    if new_text or len(logprobs) > num_logprobs:
                        push(text[len(streamed) :] if new_text else "", logprobs[num_logprobs:])
                        streamed = text if new_text else streamed
                        num_logprobs = max(num_logprobs, len(logprobs))
            except EngineDiedError as exc:
                if attempt == self.max_requeues:
                    raise
                self.count += 1
                logger.warning("re-queueing a call from engine %s: %s", engine.name, exc)
                engine = await self._live_engine(place_again)
                continue
            assert final is not None and final.finished
            return final
        raise AssertionError("unreachable")

    async def _live_engine(self, place: Callable[[], EngineHandle]) -> EngineHandle:
        deadline = time.monotonic() + self.wait_for_engine_s
        engine = place()
        while not engine.alive:
            if time.monotonic() >= deadline:
                raise EngineDiedError(
                    f"no live engine to run the call on within {self.wait_for_engine_s:g} s"
                )
            await asyncio.sleep(self.poll_s)
            engine = place()
        return engine
