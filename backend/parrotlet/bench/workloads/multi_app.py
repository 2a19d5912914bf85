"""Multi-app serving (issue 7): four apps, each with its own long system prompt, arrive as one
seeded Poisson stream at several engines; the sustainable request rate at a per-token latency
target, parrotlet vs request-level serving (placement by load only, FCFS, prefix caching on).

Both variants start warm (every engine holds every system prompt: their steady state, as the
prompts fit many times over). The rule: the unloaded per-token latency is the mean over one app of
each kind run alone at request level; the target is `target_factor` times it. Rates are
`load_factors` divided by the mean unloaded app latency. A variant's sustainable rate is the
highest rate whose mean per-token latency is <= the target with every lower rate also meeting it
(a variant stops at its first miss); None when even the lowest rate misses. A variant that met
the target at every rate of the grid goes on doubling the rate up to `max_load_factor`, so its
sustainable rate has a missed rate above it (on the H100 on 2026-12-07 both variants met the
target at the grid's top, 8x, and "sustainable" said nothing). Then each variant bisects
(geometric midpoints) between its highest met and lowest missed rate for `refine_steps` more
runs, so the sustainable rate is known to a finer step than the grid's x2. A run holds
`rate * window_s` requests (clamped), so the high rates are streams, not one burst.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace

from parrotlet.bench.apps import PARROTLET, REQUEST_LEVEL, App, fixed_length, run_apps
from parrotlet.bench.report import Ratio, Report
from parrotlet.bench.setup import Bench
from parrotlet.bench.synthetic import SyntheticText
from parrotlet.graph.ir import Call, Graph, Input, Output, PerfCriterion, Text, Transform, Variable
from parrotlet.serve.core import ServeCore
from parrotlet.serve.engines import EngineHandle

KINDS = ("chat", "chain", "map-reduce", "qa")
FULL = dict(
    system_tokens=[3584, 3072, 3840, 3328],  # one per kind, in KINDS order
    user_tokens=128,
    chunk_tokens=384,
    chain_steps=3,
    maps=3,
    questions=2,
    output_tokens=dict(chat=64, chain=32, map=32, reduce=48, qa=48),
    num_engines=4,
    load_factors=[1, 2, 4, 8],
    max_load_factor=64,  # the grid goes on doubling up to this while a variant meets the target
    refine_steps=3,  # bisections after the grid: the x2 grid step becomes 2 ** (1/8) ~ 1.09
    window_s=8.0,  # requests per rate: rate * window_s, clamped to [min_requests, max_requests]
    min_requests=12,
    max_requests=160,
    target_factor=4.0,
    delay_s=0.0,
    seed=0,
)
SMOKE = dict(
    FULL,
    system_tokens=[64, 48, 80, 56],
    user_tokens=8,
    chunk_tokens=16,
    chain_steps=2,
    maps=2,
    output_tokens=dict(chat=4, chain=3, map=3, reduce=4, qa=3),
    num_engines=2,
    load_factors=[1, 4],
    max_load_factor=4,
    refine_steps=1,
    min_requests=8,
    max_requests=8,
    target_factor=20.0,  # CPU timings are noisy; the smoke run checks the plumbing
)
VARIANTS = {"parrotlet": PARROTLET, "request-level": REQUEST_LEVEL}


def chat_app(text: SyntheticText, system: str, sizes: Mapping) -> App:
    """One call: system prompt, a user message, the reply."""
    call = Call(
        "chat",
        (
            Text(system),
            Text("\nUser:"),
            Input("user"),
            Text("\nAssistant:"),
            Output("reply", fixed_length(sizes["output_tokens"]["chat"])),
        ),
        chat=False,
    )
    graph = Graph((Variable("user", text.text(sizes["user_tokens"])),), (call,))
    return App(graph, {"reply": PerfCriterion.LATENCY}, kind="chat")


def chain_app(text: SyntheticText, system: str, sizes: Mapping) -> App:
    """`chain_steps` dependent calls: each sees the task and the previous step's output."""
    calls, previous = [], None
    for i in range(sizes["chain_steps"]):
        context = () if previous is None else (Text("\nPrevious step:"), Input(previous))
        segments = (
            Text(system),
            Text("\nTask:"),
            Input("task"),
            *context,
            Text("\nNext step:"),
            Output(f"step{i}", fixed_length(sizes["output_tokens"]["chain"])),
        )
        calls.append(Call(f"step{i}", segments, chat=False))
        previous = f"step{i}"
    graph = Graph((Variable("task", text.text(sizes["user_tokens"])),), tuple(calls))
    return App(graph, {previous: PerfCriterion.LATENCY}, kind="chain")


def map_reduce_app(text: SyntheticText, system: str, sizes: Mapping) -> App:
    """`maps` independent calls over document chunks, joined, then one reduce call."""
    n, out = sizes["maps"], sizes["output_tokens"]
    maps = tuple(
        Call(
            f"map{i}",
            (
                Text(system),
                Text("\nSection:"),
                Input(f"chunk{i}"),
                Output(f"note{i}", fixed_length(out["map"])),
            ),
            chat=False,
        )
        for i in range(n)
    )
    join = Transform("join", "join", tuple(f"note{i}" for i in range(n)), "notes", {"sep": "\n"})
    answer = Output("answer", fixed_length(out["reduce"]))
    reduce = Call("reduce", (Text(system), Text("\nNotes:"), Input("notes"), answer), chat=False)
    variables = tuple(Variable(f"chunk{i}", text.text(sizes["chunk_tokens"])) for i in range(n))
    graph = Graph(variables, (*maps, reduce), (join,))
    return App(graph, {"answer": PerfCriterion.LATENCY}, kind="map-reduce")


def qa_app(text: SyntheticText, system: str, sizes: Mapping) -> App:
    """`questions` independent answers over the same system prompt, all fetched."""
    calls = tuple(
        Call(
            f"answer{i}",
            (
                Text(system),
                Text("\nQuestion:"),
                Input(f"q{i}"),
                Text("\nAnswer:"),
                Output(f"a{i}", fixed_length(sizes["output_tokens"]["qa"])),
            ),
            chat=False,
        )
        for i in range(sizes["questions"])
    )
    variables = tuple(
        Variable(f"q{i}", text.text(sizes["user_tokens"])) for i in range(sizes["questions"])
    )
    fetch = {f"a{i}": PerfCriterion.LATENCY for i in range(sizes["questions"])}
    return App(Graph(variables, calls), fetch, kind="qa")


BUILDERS: dict[str, Callable[[SyntheticText, str, Mapping], App]] = {
    "chat": chat_app,
    "chain": chain_app,
    "map-reduce": map_reduce_app,
    "qa": qa_app,
}


def system_prompts(text: SyntheticText, sizes: Mapping) -> dict[str, str]:
    """One distinct system prompt per kind, of exactly `system_tokens` tokens."""
    return {kind: text.text(n) for kind, n in zip(KINDS, sizes["system_tokens"], strict=True)}


def poisson_arrivals(rate: float, num: int, seed: int) -> list[float]:
    """`num` arrival times (s) of a Poisson process of `rate` per second; the first at 0.

    The gaps are `random.Random(seed).expovariate(rate)` draws, so one seed gives the same
    pattern at every rate, scaled by 1 / rate.
    """
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    rng, t, arrivals = random.Random(seed), 0.0, []
    for _ in range(num):
        arrivals.append(t)
        t += rng.expovariate(rate)
    return arrivals


def poisson_apps(
    text: SyntheticText, systems: Mapping[str, str], sizes: Mapping, rate: float, num: int
) -> list[App]:
    """`num` apps of seeded random kinds arriving by `poisson_arrivals`."""
    arrivals = poisson_arrivals(rate, num, sizes["seed"])
    kinds = random.Random(sizes["seed"] + 1).choices(KINDS, k=num)
    return [
        replace(BUILDERS[kind](text, systems[kind], sizes), arrival=arrival)
        for kind, arrival in zip(kinds, arrivals, strict=True)
    ]


def sustainable_rate(latency_by_rate: Mapping[float, float], target: float) -> float | None:
    """The highest rate whose latency, and every lower rate's, is <= `target`; None if the
    lowest rate already misses (or nothing was measured)."""
    if target <= 0:
        raise ValueError(f"target must be > 0, got {target}")
    best = None
    for rate in sorted(latency_by_rate):
        if latency_by_rate[rate] > target:
            break
        best = rate
    return best


def next_probe(latency_by_rate: Mapping[float, float], target: float) -> float | None:
    """The rate to measure next: the geometric midpoint (3 significant digits) between the
    sustainable rate and the lowest missed rate above it; None when there is no such pair or the
    two are adjacent at that precision."""
    low = sustainable_rate(latency_by_rate, target)
    if low is None:
        return None
    misses = [r for r, ptl in latency_by_rate.items() if r > low and ptl > target]
    if not misses:
        return None
    high = min(misses)
    mid = float(f"{math.sqrt(low * high):.3g}")
    return mid if low < mid < high else None


async def extend(
    measured: dict[str, dict[float, float]],
    target: float,
    max_rate: float,
    probe: Callable[[str, float], Awaitable[float]],
) -> None:
    """Double the rate past the grid for each variant that met `target` at every rate measured,
    until it misses or the next rate (3 significant digits) passes `max_rate`: without a miss
    above it, the highest met rate bounds nothing."""
    for name, latencies in measured.items():
        while latencies and all(ptl <= target for ptl in latencies.values()):
            rate = float(f"{2 * max(latencies):.3g}")
            if rate > max_rate:
                break
            latencies[rate] = await probe(name, rate)


async def refine(
    measured: dict[str, dict[float, float]],
    target: float,
    steps: int,
    probe: Callable[[str, float], Awaitable[float]],
) -> None:
    """Bisect each variant's sustainable rate: up to `steps` runs of `probe(variant, rate)`
    (its mean per-token latency, s), recorded into `measured`."""
    for name, latencies in measured.items():
        for _ in range(steps):
            rate = next_probe(latencies, target)
            if rate is None:
                break
            latencies[rate] = await probe(name, rate)


def num_requests(rate: float, sizes: Mapping) -> int:
    n = round(rate * sizes["window_s"])
    return max(sizes["min_requests"], min(sizes["max_requests"], n))


def p90(values: Sequence[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


async def measure(
    core: ServeCore, apps: Sequence[App], tenant: str, request_level: bool, delay: float
) -> tuple[dict[str, float], list[float]]:
    """Run `apps`; the row of metrics and each engine's prefix hit rate during the run."""
    before = [e.stats() for e in core.engines]
    start = time.perf_counter()
    results = await run_apps(core, apps, tenant, request_level=request_level, delay=delay)
    wall = time.perf_counter() - start
    after = [e.stats() for e in core.engines]
    per_token = [r.per_token_latency for r in results]
    pairs = list(zip(after, before, strict=True))
    prompt = [a.num_prompt_tokens - b.num_prompt_tokens for a, b in pairs]
    cached = [a.num_cached_prompt_tokens - b.num_cached_prompt_tokens for a, b in pairs]
    row = {
        "requests": len(results),
        "mean_ptl_ms": 1000 * statistics.fmean(per_token),
        "p90_ptl_ms": 1000 * p90(per_token),
        "out_tok_s": sum(r.output_tokens for r in results) / wall,
        "prefill_tokens": sum(prompt) - sum(cached),
        "prefix_hit": sum(cached) / max(1, sum(prompt)),
    }
    return row, [round(c / max(1, p), 4) for c, p in zip(cached, prompt, strict=True)]


async def warm_up(
    cores: Mapping[str, ServeCore], text: SyntheticText, systems: Mapping[str, str], sizes: Mapping
) -> None:
    """Bring every variant to its steady state before measuring: each engine holds every system
    prompt in the variant's tenant (the four fit many times over in each engine's KV share, so a
    long run would cache them everywhere under either placement), and one app of each kind has run
    through the variant's serving path (kernels compiled, CUDA graphs captured)."""
    for name, core in cores.items():
        prompts = [core.assembler.encode(s) for s in systems.values()]
        await asyncio.gather(
            *(_prefill(e, ids, _tenant(name)) for e in core.engines for ids in prompts)
        )
        apps = [BUILDERS[k](text, systems[k], sizes) for k in KINDS]
        await run_apps(core, apps, _tenant(name), request_level=name == "request-level")


async def _prefill(engine: EngineHandle, prompt: list[int], namespace: str) -> None:
    async for _ in engine.generate(prompt, fixed_length(1), priority=0, cache_namespace=namespace):
        pass


async def unloaded(
    core: ServeCore, text: SyntheticText, systems: Mapping[str, str], sizes: Mapping
) -> tuple[float, float]:
    """One app of each kind run alone at request level: (mean latency s, mean per-token s)."""
    results = []
    for kind in KINDS:
        app = BUILDERS[kind](text, systems[kind], sizes)
        (result,) = await run_apps(core, [app], _tenant("request-level"), request_level=True)
        results.append(result)
    latency = statistics.fmean(r.latency for r in results)
    return latency, statistics.fmean(r.per_token_latency for r in results)


def _tenant(variant: str) -> str:
    return f"multi-app-{variant}"


async def run(bench: Bench, smoke: bool) -> Report:
    sizes = SMOKE if smoke else FULL
    text = SyntheticText(bench.tokenizer, seed=3)
    systems = system_prompts(text, sizes)
    report = Report("multi-app", bench.spec.device, bench.spec.model_name, params=dict(sizes))
    async with bench.cores(VARIANTS, num_engines=sizes["num_engines"]) as cores:
        await warm_up(cores, text, systems, sizes)
        latency, per_token = await unloaded(cores["request-level"], text, systems, sizes)
        target = sizes["target_factor"] * per_token
        rates = [float(f"{f / latency:.3g}") for f in sizes["load_factors"]]
        report.rows["unloaded (request-level)"] = {
            "latency_s": latency,
            "mean_ptl_ms": 1000 * per_token,
            "target_ptl_ms": 1000 * target,
        }
        report.params |= {"rates": rates, "target_ptl_ms": 1000 * target, "engine_prefix_hit": {}}
        max_rate = float(f"{sizes['max_load_factor'] / latency:.3g}")
        measured = await sweep(cores, text, systems, sizes, rates, max_rate, target, report)
    _add_sustainable(report, measured, target)
    return report


async def sweep(
    cores: Mapping[str, ServeCore],
    text: SyntheticText,
    systems: Mapping[str, str],
    sizes: Mapping,
    rates: Sequence[float],
    max_rate: float,
    target: float,
    report: Report,
) -> dict[str, dict[float, float]]:
    """Each variant at each rate (the same apps for both; which goes first alternates), until
    its first miss of the target, then `extend` up to `max_rate` and `refine`; rows go into
    `report`. Returns mean per-token latency (s) by variant and rate."""
    measured: dict[str, dict[float, float]] = {name: {} for name in VARIANTS}

    async def probe(name: str, rate: float, apps: Sequence[App] | None = None) -> float:
        apps = apps or poisson_apps(text, systems, sizes, rate, num_requests(rate, sizes))
        row, hits = await measure(
            cores[name], apps, _tenant(name), name == "request-level", sizes["delay_s"]
        )
        report.rows[f"{name}: {rate:g} req/s"] = {"rate_req_s": rate, **row}
        report.params["engine_prefix_hit"][f"{name}: {rate:g} req/s"] = hits
        return row["mean_ptl_ms"] / 1000

    for i, rate in enumerate(rates):
        apps = poisson_apps(text, systems, sizes, rate, num_requests(rate, sizes))
        for name in list(VARIANTS)[:: 1 if i % 2 == 0 else -1]:
            if any(ptl > target for ptl in measured[name].values()):
                continue  # missed the target at a lower rate: higher rates miss too
            measured[name][rate] = await probe(name, rate, apps)
    await extend(measured, target, max_rate, probe)
    await refine(measured, target, sizes["refine_steps"], probe)
    return measured


def _add_sustainable(
    report: Report, measured: Mapping[str, Mapping[float, float]], target: float
) -> None:
    """A row per variant with its sustainable rate (absent: none sustained), and the ratio."""
    best = {name: sustainable_rate(latencies, target) for name, latencies in measured.items()}
    for name, rate in best.items():
        report.rows[f"{name}: sustainable"] = {} if rate is None else {"rate_req_s": rate}
    report.params["sustainable_req_s"] = best
    ours, theirs = best["parrotlet"], best["request-level"]
    if ours is not None and theirs is not None:
        report.ratios.append(Ratio("sustainable rate: parrotlet / request-level", ours / theirs))
    elif ours is not None:  # the baseline sustained none: the ratio is unbounded
        report.ratios.append(Ratio("sustainable rate: parrotlet / request-level", float("inf")))
