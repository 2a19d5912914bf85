"""AsyncEngine: steps run on the engine's own thread, so work in the event loop's shared thread
pool (tenants' regexes, long tokenizing) never queues them."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from parrotlet.engine.async_engine import AsyncEngine
from parrotlet.engine.sampling_params import SamplingParams

from .helpers import hf_greedy, make_checkpoint, make_engine, make_prompts

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    return folder, make_checkpoint("llama", folder)


async def test_steps_run_while_the_loops_thread_pool_is_busy(checkpoint) -> None:
    folder, hf_model = checkpoint
    engine = AsyncEngine(make_engine(folder))
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(1))
    release = threading.Event()
    busy = loop.run_in_executor(None, release.wait)  # the shared pool's one thread, taken
    prompt = make_prompts([7])[0]
    params = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)

    try:
        final = await asyncio.wait_for(engine.complete(prompt, params), timeout=30)
    finally:
        release.set()
        await busy
        await engine.close()

    assert list(final.token_ids) == hf_greedy(hf_model, prompt, 5)
