"""Mixed workload (Parrot §8.4): latency-sensitive chats arriving at a Poisson rate share one engine
with throughput map-reduce jobs. The question: do chats keep their latency (within 1.1x of chats
alone) while the bulk jobs finish no later than on a throughput-oriented request-level server?

Chats fetch their reply with LATENCY (engine priority class 0), map-reduce jobs fetch their final
summary with THROUGHPUT (task groups of class 2). parrotlet's engine has the full token budget and
caps a step at the latency cap while chats run (see map_reduce.py for the two values and why);
request-level serving runs everything FCFS at priority 0 on an uncapped or a capped engine.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import replace

from parrotlet.bench.apps import App, AppResult, engine_counts, fixed_length, run_apps
from parrotlet.bench.report import Ratio, Report
from parrotlet.bench.setup import Bench
from parrotlet.bench.synthetic import SyntheticText
from parrotlet.bench.workloads import map_reduce
from parrotlet.bench.workloads.map_reduce import VARIANTS, engines, map_reduce_app
from parrotlet.engine.config import EngineConfig, SchedulerConfig
from parrotlet.graph.ir import Call, Graph, Output, PerfCriterion, Text

SERVE_DEFAULT = (  # `parrotlet serve`'s scheduler: (token budget, latency cap)
    SchedulerConfig.max_num_batched_tokens,
    SchedulerConfig.latency_max_num_batched_tokens,
)


def _job_sizes(sizes: dict) -> dict:
    """map_reduce's job shape and engine budgets (its network delays do not apply here)."""
    return {k: v for k, v in sizes.items() if k != "delays"}


FULL = dict(
    _job_sizes(map_reduce.FULL),
    num_maps=16,
    job_arrivals=[0.0, 2.5, 5.0],
    chat_prompt_tokens=512,
    chat_output=64,
    num_chats=30,
    chat_rate=4.0,  # per second
    # more parrotlet rows, (token budget, latency cap): how they trade chat latency for jobs;
    # the last is `parrotlet serve`'s default scheduler
    other_engines=[(8192, 256), (2048, 256), (8192, 64), SERVE_DEFAULT],
)
SMOKE = dict(
    _job_sizes(map_reduce.SMOKE),
    num_maps=4,
    job_arrivals=[0.0],
    chat_prompt_tokens=24,
    chat_output=4,
    num_chats=6,
    chat_rate=20.0,
    other_engines=[(512, 4), (64, 32)],
)
CHAT_LATENCY_TARGET = 1 / 1.1  # chats alone / mixed: within 1.1x of chats alone
MAP_REDUCE_TARGET = 1.0  # request-level uncapped / parrotlet: no worse than the baseline


def chat_app(text: SyntheticText, prompt_tokens: int, output: int, arrival: float) -> App:
    """One chat turn: a fresh prompt, a reply fetched with LATENCY."""
    segments = (Text(text.text(prompt_tokens)), Output("reply", fixed_length(output)))
    call = Call("chat", segments, chat=False)
    return App(Graph((), (call,)), {"reply": PerfCriterion.LATENCY}, arrival=arrival, kind="chat")


def chat_apps(text: SyntheticText, sizes: dict, seed: int = 3) -> list[App]:
    """`num_chats` chats with Poisson arrivals at `chat_rate` per second (seeded)."""
    rng, arrival, apps = random.Random(seed), 0.0, []
    for _ in range(sizes["num_chats"]):
        arrival += rng.expovariate(sizes["chat_rate"])
        apps.append(chat_app(text, sizes["chat_prompt_tokens"], sizes["chat_output"], arrival))
    return apps


def bulk_apps(text: SyntheticText, sizes: dict) -> list[App]:
    """Map-reduce jobs fetched with THROUGHPUT, one per arrival time."""
    return [
        map_reduce_app(text, sizes["num_maps"], sizes, PerfCriterion.THROUGHPUT, arrival)
        for arrival in sizes["job_arrivals"]
    ]


def runs(sizes: dict) -> dict[str, tuple[str, bool, str]]:
    """Row name: (variant of map_reduce.VARIANTS, with bulk jobs, engine of mixed_engines)."""
    others = {
        f"parrotlet, {name}": ("parrotlet", True, f"parrotlet {name}")
        for name in map(engine_name, sizes["other_engines"])
    }
    return {
        "chats alone": ("parrotlet", False, "parrotlet"),
        "parrotlet": ("parrotlet", True, "parrotlet"),
        **others,
        "request-level": ("request-level", True, "uncapped"),
        "request-level capped": ("request-level capped", True, "capped"),
    }


def engine_name(budget_and_cap: tuple[int, int | None]) -> str:
    """How a row names one of `other_engines` (a cap of None: no cap)."""
    budget, cap = budget_and_cap
    return f"budget {budget} " + ("no cap" if cap is None else f"cap {cap}")


def mixed_engines(sizes: dict) -> dict[str, EngineConfig]:
    """map_reduce's three engines, plus parrotlet's at each of `other_engines`: the parrotlet
    rows show how the token budget and the latency cap trade chat latency for bulk progress."""
    configs = engines(sizes)
    parrotlet = configs["parrotlet"]

    def budgeted(budget: int, cap: int | None) -> EngineConfig:
        scheduler = replace(
            parrotlet.scheduler, max_num_batched_tokens=budget, latency_max_num_batched_tokens=cap
        )
        return replace(parrotlet, scheduler=scheduler)

    others = {f"parrotlet {engine_name(e)}": budgeted(*e) for e in sizes["other_engines"]}
    return {"parrotlet": parrotlet} | others | configs


async def run(bench: Bench, smoke: bool) -> Report:
    sizes = SMOKE if smoke else FULL
    text = SyntheticText(bench.tokenizer, seed=4)
    chats, bulk = chat_apps(text, sizes), bulk_apps(text, sizes)
    report = Report("mixed", bench.spec.device, bench.spec.model_name, params=sizes)
    rows = runs(sizes)
    for name, engine in mixed_engines(sizes).items():
        variants = {row: VARIANTS[v] for row, (v, _, e) in rows.items() if e == name}
        async with bench.cores({r: v.config for r, v in variants.items()}, engine=engine) as cores:
            await map_reduce.warm_up(cores, text, variants, sizes)
            for row, variant in variants.items():
                apps = chats + bulk if rows[row][1] else chats
                before = cores[row].engines[0].stats()
                results = await run_apps(
                    cores[row], apps, f"mixed-{row}", request_level=variant.request_level
                )
                counts = engine_counts(before, cores[row].engines[0].stats())
                report.rows[row] = metrics(results) | counts
    report.ratios = ratios(report.rows, [engine_name(e) for e in sizes["other_engines"]])
    return report


def metrics(results: list[AppResult]) -> dict[str, float]:
    """Mean chat latency per output token and end to end; mean map-reduce completion time."""
    chats = [r for r in results if r.kind == "chat"]
    jobs = [r for r in results if r.kind == "map-reduce"]
    row = {
        "chat_token_s": statistics.mean(r.per_token_latency for r in chats),
        "chat_latency_s": statistics.mean(r.latency for r in chats),
    }
    if jobs:
        row["map_reduce_s"] = statistics.mean(r.latency for r in jobs)
    return row


def ratios(rows: dict[str, dict[str, float]], others: list[str]) -> list[Ratio]:
    """Higher is better for parrotlet in each (baseline / parrotlet mixed)."""
    alone, request_level = rows["chats alone"], rows["request-level"]
    ours = rows["parrotlet"]
    return [
        Ratio(
            "chat per-token latency: chats alone / parrotlet mixed (higher is better)",
            alone["chat_token_s"] / ours["chat_token_s"],
            CHAT_LATENCY_TARGET,
        ),
        Ratio(
            "map-reduce completion: request-level / parrotlet mixed",
            request_level["map_reduce_s"] / ours["map_reduce_s"],
            MAP_REDUCE_TARGET,
        ),
        Ratio(
            "chat per-token latency: request-level / parrotlet mixed",
            request_level["chat_token_s"] / ours["chat_token_s"],
        ),
        Ratio(
            "chat per-token latency: request-level capped / parrotlet mixed",
            rows["request-level capped"]["chat_token_s"] / ours["chat_token_s"],
        ),
        Ratio(
            "map-reduce completion: request-level capped / parrotlet mixed",
            rows["request-level capped"]["map_reduce_s"] / ours["map_reduce_s"],
        ),
    ] + [ratio for name in others for ratio in other_ratios(rows, name)]


def other_ratios(rows: dict[str, dict[str, float]], name: str) -> list[Ratio]:
    """The two targets for parrotlet on another engine of `other_engines`."""
    row = rows[f"parrotlet, {name}"]
    return [
        Ratio(
            f"{name}: chat per-token latency, chats alone / parrotlet (higher is better)",
            rows["chats alone"]["chat_token_s"] / row["chat_token_s"],
            CHAT_LATENCY_TARGET,
        ),
        Ratio(
            f"{name}: map-reduce completion, request-level / parrotlet",
            rows["request-level"]["map_reduce_s"] / row["map_reduce_s"],
            MAP_REDUCE_TARGET,
        ),
    ]
