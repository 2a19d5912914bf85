"""What each app-level optimization buys, on CPU, on one engine (default model).

Workloads: (1) shared prefix — 8 calls with a common ~500-token instruction; (2) map-reduce —
6 maps sharing an instruction, a join, a reduce; (3) mixed — a latency-critical chat arriving
while throughput map work is queued on an engine limited to 4 running sequences. Each runs with
all optimizations on and with one switched off (ServeConfig flags), plus a request-level client
for map-reduce. Every run uses its own tenant, so no run reuses another's cached prompts.
Prints one summary line and writes benchmarks/results/app_optimizations.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from parrotlet.demo import sample_chunks
from parrotlet.engine.config import EngineConfig, SchedulerConfig
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.graph.ir import Call, Graph, Input, Output, Text, Transform, Variable
from parrotlet.serve.config import ServeConfig
from parrotlet.serve.core import ServeCore

INSTRUCTION = "You are a careful assistant. " + " ".join(
    f"Guideline {i}: be brief, factual and polite." for i in range(45)
)
ROUNDS = 3  # the machine is shared: medians of rounds that interleave the variants
MAP = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
VARIANTS = {
    "all on": ServeConfig(),
    "no prefix sharing": ServeConfig(prefix_sharing=False),
    "no app scheduling": ServeConfig(app_scheduling=False),
}


def shared_prefix_graph() -> Graph:
    questions = [f"Question {i}: name one thing a lighthouse keeper does." for i in range(8)]
    calls = tuple(
        Call(f"c{i}", (Text(INSTRUCTION + "\n"), Input(f"q{i}"), Output(f"a{i}", MAP)))
        for i in range(len(questions))
    )
    transform = Transform("all", "join", tuple(f"a{i}" for i in range(len(questions))), "answers")
    variables = tuple(Variable(f"q{i}", q) for i, q in enumerate(questions))
    return Graph(variables, calls, (transform,))


def map_reduce_graph(chunks: list[str]) -> Graph:
    maps = tuple(
        Call(f"m{i}", (Text(INSTRUCTION + "\nSummarize:\n"), Input(f"p{i}"), Output(f"s{i}", MAP)))
        for i in range(len(chunks))
    )
    reduce = Call("r", (Text("Combine these summaries:\n"), Input("joined"), Output("final", MAP)))
    join = Transform("j", "join", tuple(f"s{i}" for i in range(len(chunks))), "joined")
    variables = tuple(Variable(f"p{i}", c) for i, c in enumerate(chunks))
    return Graph(variables, (*maps, reduce), (join,))


async def run_graph(core: ServeCore, tenant: str, graph: Graph, sink: str) -> float:
    start = time.perf_counter()
    sid = await core.create_session(tenant)
    await core.submit(tenant, sid, graph)
    await core.get_variable(tenant, sid, sink)
    core.delete_session(tenant, sid)
    return time.perf_counter() - start


async def request_level_map_reduce(core: ServeCore, tenant: str, chunks: list[str]) -> float:
    """The client sends each map as its own request, waits for all, then sends the reduce."""
    start = time.perf_counter()

    async def one(segments: tuple, value: str) -> str:
        sid = await core.create_session(tenant)
        graph = Graph((Variable("in", value),), (Call("c", (*segments, Output("out", MAP))),))
        await core.submit(tenant, sid, graph)
        result = (await core.get_variable(tenant, sid, "out")).value
        core.delete_session(tenant, sid)
        return result

    head = (Text(INSTRUCTION + "\nSummarize:\n"), Input("in"))
    summaries = await asyncio.gather(*(one(head, c) for c in chunks))
    await one((Text("Combine these summaries:\n"), Input("in")), "\n".join(summaries))
    return time.perf_counter() - start


async def mixed(core: ServeCore, tenant: str, chunks: list[str]) -> tuple[float, float]:
    """Chat latency while throughput map work is queued (fetched with 'throughput')."""
    sid = await core.create_session(tenant)
    await core.submit(tenant, sid, map_reduce_graph(chunks + chunks))
    bulk = asyncio.ensure_future(core.get_variable(tenant, sid, "final", criterion="throughput"))
    while core.engines[0].stats().num_waiting < 4:  # the chat arrives while maps are queued
        await asyncio.sleep(0.05)
    chat_sid = await core.create_session(tenant)
    chat = Call("chat", (Text("Say hello to a visitor."), Output("hello", MAP)))
    start = time.perf_counter()
    await core.submit(tenant, chat_sid, Graph((), (chat,)))
    await core.get_variable(tenant, chat_sid, "hello")
    chat_latency = time.perf_counter() - start
    await bulk
    return chat_latency, time.perf_counter() - start


async def one_round(base: ServeCore, tag: str, chunks: list[str]) -> dict[str, dict]:
    rows: dict[str, dict[str, float]] = {}
    for i, (name, config) in enumerate(VARIANTS.items()):
        core = base.sibling(config)
        engine = core.engines[0]
        before = engine.stats().num_computed_tokens
        t_shared = await run_graph(core, f"sp-{tag}-{i}", shared_prefix_graph(), "answers")
        computed = engine.stats().num_computed_tokens - before
        t_mr = await run_graph(core, f"mr-{tag}-{i}", map_reduce_graph(chunks), "final")
        chat, bulk = await mixed(core, f"mx-{tag}-{i}", chunks)
        rows[name] = {
            "shared_prefix_s": t_shared,
            "shared_prefix_computed_tokens": computed,
            "map_reduce_s": t_mr,
            "mixed_chat_latency_s": chat,
            "mixed_total_s": bulk,
        }
    return rows


def median_rows(rounds: list[dict[str, dict]]) -> dict[str, dict[str, float]]:
    return {
        name: {k: statistics.median(r[name][k] for r in rounds) for k in rounds[0][name]}
        for name in rounds[0]
    }


async def main() -> None:
    engine_config = EngineConfig(scheduler=SchedulerConfig(max_num_seqs=4))
    base = ServeCore.from_config(engine_config)
    chunks = sample_chunks(70)
    rounds = [await one_round(base, str(r), chunks) for r in range(ROUNDS)]
    rows = median_rows(rounds)
    rows["request-level client"] = {
        "map_reduce_s": await request_level_map_reduce(
            base.sibling(ServeConfig(app_scheduling=False, prefix_sharing=False)), "rl", chunks
        )
    }
    await base.close()
    result = {
        "benchmark": "app_optimizations",
        "model": "SmolLM2-135M-Instruct fp32, CPU",
        "max_num_seqs": 4,
        "rounds": ROUNDS,
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    out = Path("benchmarks/results/app_optimizations.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    on = rows["all on"]
    print(
        "app_optimizations: shared prefix {:.2f}x vs no sharing ({} vs {} tokens computed); "
        "map-reduce {:.2f}x vs no sharing, {:.2f}x vs no app scheduling, {:.2f}x vs "
        "request-level; chat latency under load {:.2f}x lower with app scheduling".format(
            rows["no prefix sharing"]["shared_prefix_s"] / on["shared_prefix_s"],
            on["shared_prefix_computed_tokens"],
            rows["no prefix sharing"]["shared_prefix_computed_tokens"],
            rows["no prefix sharing"]["map_reduce_s"] / on["map_reduce_s"],
            rows["no app scheduling"]["map_reduce_s"] / on["map_reduce_s"],
            rows["request-level client"]["map_reduce_s"] / on["map_reduce_s"],
            rows["no app scheduling"]["mixed_chat_latency_s"] / on["mixed_chat_latency_s"],
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
