"""Two engine worker processes registered with one server: prefix affinity and re-queueing.

The server (ServeCore with no local engine, behind uvicorn) runs on the test's event loop; the
workers are real `parrotlet engine-worker` subprocesses on the default model.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from parrotlet.engine.config import EngineConfig
from parrotlet.engine.outputs import EngineStats
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.graph.ir import Call, Graph, Input, Output, Text
from parrotlet.serve.app import create_app
from parrotlet.serve.auth import ApiKeys
from parrotlet.serve.core import ServeCore
from parrotlet.serve.remote_engine import RemoteEngine

from .helpers import ENGINE_KEY, KEY_A

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TENANT = "default-tenant"
INSTRUCTION = "You are a careful assistant. " + " ".join(
    f"Rule {i}: answer briefly, in plain words, and never invent facts." for i in range(20)
)
QUESTIONS = ["What is 2+2?", "Name a color.", "Name a fruit.", "What is ice?", "Name a bird."]
CHUNKS = [
    "The Nile is the longest river in Africa and flows north into the Mediterranean Sea.",
    "Honey never spoils; archaeologists found edible honey in ancient Egyptian tombs.",
    "The Moon is slowly moving away from the Earth, about four centimetres every year.",
    "Octopuses have three hearts and blue blood, and they can change colour quickly.",
    "Mount Everest grows a few millimetres every year because tectonic plates collide.",
    "Bananas are berries, botanically speaking, while strawberries are not true berries.",
]


@dataclass
class Cluster:
    core: ServeCore
    workers: dict[str, subprocess.Popen[bytes]]

    def remote(self, name: str) -> RemoteEngine:
        return self.core.registry.remotes[name]

    async def stats(self) -> dict[str, EngineStats]:
        """Every live worker's stats, read from the worker itself (not a heartbeat)."""
        remotes = self.core.registry.remotes
        return {name: await engine.fetch_stats() for name, engine in remotes.items()}


@pytest.fixture(scope="module")
async def cluster(default_model_dir: Path, tmp_path_factory) -> AsyncIterator[Cluster]:
    core = ServeCore.from_config(EngineConfig(), local=False)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(create_app(core, ApiKeys([KEY_A]), ApiKeys([ENGINE_KEY])), log_level="error")
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    logs = tmp_path_factory.mktemp("workers")
    workers = {name: start_worker(name, url, logs / f"{name}.log") for name in ("w0", "w1")}
    try:
        await core.registry.wait_for(2, timeout_s=60)
    except TimeoutError:
        tails = {n: (logs / f"{n}.log").read_text()[-2000:] for n in workers}
        pytest.fail(f"engine workers did not register: {tails}")
    yield Cluster(core, workers)
    for proc in workers.values():
        proc.terminate()
    for proc in workers.values():
        proc.wait(timeout=10)
    server.should_exit = True
    await serving


def start_worker(name: str, url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "parrotlet.cli", "engine-worker", "--server", url]
    command += ["--name", name, "--engine-key", ENGINE_KEY]
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def make_question_call(call_id: str, question: str) -> Call:
    greedy = SamplingParams(temperature=0.0, max_tokens=8)
    text = f"{INSTRUCTION}\nQuestion: {question}\nAnswer:"
    return Call(call_id, (Text(text), Output(f"{call_id}_answer", greedy)))


def make_map_reduce() -> Graph:
    """Six map calls (raw prompts with no shared prefix, so they spread) and one reduce."""
    summary = SamplingParams(temperature=0.0, max_tokens=24)
    maps = tuple(
        Call(f"m{i}", (Text(f"{chunk}\nOne-sentence summary:"), Output(f"s{i}", summary)), False)
        for i, chunk in enumerate(CHUNKS)
    )
    segments: list = [Text("Facts:\n")]
    for i in range(len(CHUNKS)):
        segments += [Input(f"s{i}"), Text("\n")]
    segments += [Text("The common theme of these facts:"), Output("final", summary)]
    return Graph((), (*maps, Call("reduce", tuple(segments), False)))


def question_prompt(core: ServeCore, question: str) -> list[int]:
    asm = core.assembler
    text = f"{INSTRUCTION}\nQuestion: {question}\nAnswer:"
    return [*asm.chat_head, *asm.encode(text), *asm.chat_tail]


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def delta(after: EngineStats, before: EngineStats) -> tuple[int, int, int]:
    """(computed, prompt, cached prompt) tokens between two snapshots."""
    return (
        after.num_computed_tokens - before.num_computed_tokens,
        after.num_prompt_tokens - before.num_prompt_tokens,
        after.num_cached_prompt_tokens - before.num_cached_prompt_tokens,
    )


async def run_graph(core: ServeCore, graph: Graph, names: list[str]) -> dict[str, str]:
    return {r.name: r.value for r in await run_graph_results(core, graph, names)}


async def run_graph_results(core: ServeCore, graph: Graph, names: list[str]):
    sid = await core.create_session(TENANT)
    await core.submit(TENANT, sid, graph, eager=True)
    results = await asyncio.gather(*(core.get_variable(TENANT, sid, n) for n in names))
    core.delete_session(TENANT, sid)
    return results


async def test_calls_with_a_shared_prefix_land_on_one_engine(cluster: Cluster) -> None:
    core = cluster.core
    assert len(core.engines) == 2
    before = await cluster.stats()

    calls = tuple(make_question_call(f"q{i}", q) for i, q in enumerate(QUESTIONS[:4]))
    answers = await run_graph(core, Graph((), calls), [f"q{i}_answer" for i in range(4)])

    first = await cluster.stats()
    moved = {name: delta(first[name], before[name]) for name in first}
    holder = next(name for name, (computed, _, _) in moved.items() if computed > 0)
    other = ({"w0", "w1"} - {holder}).pop()
    assert len(answers) == 4 and all(answers.values())
    assert moved[other] == (0, 0, 0)
    probe = question_prompt(core, QUESTIONS[0])
    assert await cluster.remote(other).fetch_cached_prefix_len(probe, TENANT) == 0
    assert await cluster.remote(holder).fetch_cached_prefix_len(probe, TENANT) > 300

    # A later call with the same instruction goes where it is cached, even with the holder
    # listed last (ties go to the first engine) and carrying the same load.
    if core.engines[0] is cluster.remote(holder):
        core.engines.reverse()
    late = make_question_call("late", QUESTIONS[4])
    (result,) = await run_graph_results(core, Graph((), (late,)), ["late_answer"])

    second = await cluster.stats()
    prompt = question_prompt(core, QUESTIONS[4])
    cached = max(common_prefix(prompt, question_prompt(core, q)) for q in QUESTIONS[:4])
    assert delta(second[other], first[other]) == (0, 0, 0)
    reused = cached // 16 * 16  # whole blocks of the longest prefix computed before
    decodes = result.completion_tokens - 1  # the first token comes with the prefill
    assert delta(second[holder], first[holder]) == (
        len(prompt) - reused + decodes,
        len(prompt),
        reused,
    )


async def test_a_client_that_leaves_aborts_its_request_on_the_worker(cluster: Cluster) -> None:
    engine = cluster.remote("w0")
    params = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
    outputs = engine.generate([1, 2, 3, 4], params, priority=0, cache_namespace=TENANT)
    assert not (await anext(outputs)).finished
    await outputs.aclose()

    deadline = time.monotonic() + 5
    while (stats := await engine.fetch_stats()).num_running + stats.num_waiting:
        assert time.monotonic() < deadline, "the worker kept running an abandoned request"
        await asyncio.sleep(0.1)


async def test_killing_an_engine_mid_run_requeues_its_calls(cluster: Cluster) -> None:
    core = cluster.core
    names = [f"s{i}" for i in range(len(CHUNKS))] + ["final"]
    requeued_before = core.stats().calls_requeued
    run = asyncio.create_task(run_graph(core, make_map_reduce(), names))

    async with asyncio.timeout(20):  # both engines have map calls running (heartbeat stats)
        while not all(cluster.remote(n).stats().num_running > 0 for n in ("w0", "w1")):
            await asyncio.sleep(0.05)
    cluster.workers["w1"].send_signal(signal.SIGKILL)
    outputs = await asyncio.wait_for(run, 60)

    assert core.stats().calls_requeued - requeued_before >= 1
    assert [e.name for e in core.engines] == ["w0"]
    healthy = await asyncio.wait_for(run_graph(core, make_map_reduce(), names), 60)
    assert outputs == healthy
    assert all(outputs.values())
