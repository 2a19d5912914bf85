"""Re-queue: an output whose engine dies restarts on another engine without re-streaming text."""

from __future__ import annotations

import pytest

from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.serve.engines import EngineDiedError
from parrotlet.serve.placement import UNPLACED
from parrotlet.serve.requeue import Requeuer

from .fake_engines import FakeEngine

pytestmark = pytest.mark.anyio
PARAMS = SamplingParams(temperature=0.0, max_tokens=8)


async def run(
    requeuer: Requeuer, first, place_again, params: SamplingParams = PARAMS
) -> tuple[str, list[str], list[int]]:
    """(the final text, the texts pushed, the token ids of the logprobs pushed)."""
    texts: list[str] = []
    logprob_ids: list[int] = []

    def push(text: str, logprobs) -> None:
        texts.extend([text] if text else [])
        logprob_ids.extend(lp.token_id for lp in logprobs)

    final = await requeuer.generate(
        first, place_again, [1, 2, 3], params, push, priority=0, cache_namespace="t"
    )
    return final.text, texts, logprob_ids


async def test_a_dead_engines_output_restarts_elsewhere_and_streams_only_the_new_text() -> None:
    dying = FakeEngine("e0", deltas=["Hel", "lo", " wor", "ld"], die_after=2)
    healthy = FakeEngine("e1", deltas=["Hello", " world", "!"])
    requeuer = Requeuer()

    text, pushed, _ = await run(requeuer, dying, lambda: healthy)

    assert (text, pushed) == ("Hello world!", ["Hel", "lo", " world", "!"])
    assert requeuer.count == 1
    assert healthy.requests == [(1, 2, 3)]


async def test_a_restart_pushes_only_the_logprobs_of_new_tokens() -> None:
    dying = FakeEngine("e0", deltas=["Hel", "lo", " wor", "ld"], die_after=2)
    healthy = FakeEngine("e1", deltas=["Hel", "lo", " world", "!"])
    params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=0)

    _, pushed, logprob_ids = await run(Requeuer(), dying, lambda: healthy, params)

    assert pushed == ["Hel", "lo", " world", "!"]
    assert logprob_ids == [0, 1, 2, 3]  # the restart's first two tokens were reported already


async def test_a_restart_that_diverges_pushes_nothing_more() -> None:
    dying = FakeEngine("e0", deltas=["Hel", "lo", "!"], die_after=2)
    other = FakeEngine("e1", deltas=["Bye", " now"])

    text, pushed, _ = await run(Requeuer(), dying, lambda: other)

    assert (text, pushed) == ("Bye now", ["Hel", "lo"])


async def test_requeues_are_bounded() -> None:
    engines = iter([FakeEngine("e1", die_after=0), FakeEngine("e2", die_after=0)])
    requeuer = Requeuer(max_requeues=1)

    with pytest.raises(EngineDiedError, match="e1 died"):
        await run(requeuer, FakeEngine("e0", die_after=0), lambda: next(engines))
    assert requeuer.count == 1


async def test_with_no_live_engine_it_waits_for_one_then_gives_up() -> None:
    later = FakeEngine("late", deltas=["fine"])
    answers = iter([UNPLACED, UNPLACED, later])
    requeuer = Requeuer(wait_for_engine_s=5.0, poll_s=0.01)

    assert await run(requeuer, UNPLACED, lambda: next(answers)) == ("fine", ["fine"], [])
    assert requeuer.count == 0  # waiting for a first engine is not a re-queue

    with pytest.raises(EngineDiedError, match=r"no live engine to run the call on within 0\.05 s"):
        await run(Requeuer(wait_for_engine_s=0.05, poll_s=0.01), UNPLACED, lambda: UNPLACED)
