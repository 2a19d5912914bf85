"""A tenant's long texts are tokenized in a worker thread: the event loop goes on meanwhile, texts
past the variable limit are refused before any tokenizing, and what was tokenized is cached."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from parrotlet.engine.tokenizer import load_tokenizer
from parrotlet.graph.ir import Call, Graph, GraphError, Input, Output, Text, Transform, Variable
from parrotlet.serve.core import ServeCore
from parrotlet.serve.engines import ModelInfo

from .fake_engines import FakeEngine

pytestmark = pytest.mark.anyio

LONG = "hello " * 160_000  # 960K chars, 160001 tokens: about a second of tokenizing


@pytest.fixture
def core(default_model_dir: Path) -> ServeCore:
    """A 64-token context: every long prompt is refused at submit, after tokenizing it."""
    tokenizer = load_tokenizer(default_model_dir)
    return ServeCore([FakeEngine("e")], tokenizer, ModelInfo("m", 64, ()))


def long_prompt_call(text: str = LONG) -> Graph:
    return Graph((), (Call("c", (Text(text), Output("out")), chat=False),))


class LoopWatch:
    """The longest the event loop went without a turn while watched: every session's streams,
    fetches and transforms wait that long."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._last: float | None = None
        self._ticking = asyncio.create_task(self._tick())

    @classmethod
    async def start(cls) -> LoopWatch:
        watch = cls()
        await asyncio.sleep(0)  # its first tick starts the clock
        return watch

    async def _tick(self) -> None:
        while True:
            self._turn()
            await asyncio.sleep(0.002)

    def _turn(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.longest = max(self.longest, now - self._last)
        self._last = now

    def stop(self) -> float:
        self._turn()  # the time since its last turn counts too
        self._ticking.cancel()
        return self.longest


async def test_a_long_prompt_is_tokenized_while_the_loop_goes_on(core: ServeCore) -> None:
    session = await core.create_session("a")
    watch = await LoopWatch.start()

    with pytest.raises(GraphError) as refused:
        await core.submit("a", session, long_prompt_call())

    assert watch.stop() < 0.2  # tokenizing on the loop held it ~1 s
    assert str(refused.value) == (
        "call 'c': prompt has at least 160001 tokens, the model's context is 64"
    )
    assert core.assembler.cache.get(LONG) is not None  # its calls would find it tokenized


async def test_a_text_past_the_variable_limit_is_refused_untokenized(core: ServeCore) -> None:
    session = await core.create_session("a")

    with pytest.raises(GraphError) as refused:
        await core.submit("a", session, long_prompt_call("x" * 1_000_001))

    assert str(refused.value) == "call 'c': segment 0 has 1000001 chars, the limit is 1000000"
    assert core.assembler.cache.get("x" * 1_000_001) is None


async def test_a_long_value_set_by_the_client_is_tokenized_before_it_is_set(
    core: ServeCore,
) -> None:
    graph = Graph((Variable("q"),), (Call("c", (Text("Q: "), Input("q"), Output("out"))),))
    session = await core.create_session("a", graph=graph)
    cached_before = len(core.assembler.cache)

    await core.set_variable("a", session, "q", LONG)

    assert len(core.assembler.cache.get(LONG) or ()) == 160001
    assert len(core.assembler.cache) == cached_before + 1


async def test_a_long_transform_output_that_a_call_reads_is_tokenized_off_the_loop(
    core: ServeCore,
) -> None:
    doubled = Transform("t", "format", ("v",), "p", {"template": "{0}{0}"})
    call = Call("c", (Input("p"), Output("out")), chat=False)
    graph = Graph((Variable("v", "hello " * 80_000), Variable("p")), (call,), (doubled,))
    session = await core.create_session("a", graph=graph)
    watch = await LoopWatch.start()

    with pytest.raises(GraphError) as failed:
        await core.get_variable("a", session, "out", timeout=30)

    assert watch.stop() < 0.2
    assert str(failed.value) == (
        "variable 'out' could not be produced: call 'c': prompt has 160001 tokens, "
        "the model's context is 64"
    )
