"""Map-reduce summary (Parrot §8.3): N map calls each summarize one chunk of a document under a
shared instruction, a server-side join feeds one reduce call; the metric is job completion time.

parrotlet vs request-level serving (FCFS, prefix caching on) at 0 and 250 ms network delay per
request, on the same model, with and without a latency-oriented cap on batched tokens, plus
parrotlet without prefix sharing. Request-level serving sends every call at priority 0, so each
baseline gets its own engine: "uncapped" (the full budget: throughput-oriented) and "capped" (the
cap as its budget: what a deployment tuned for chat latency runs). parrotlet's engine has the full
budget and caps the tokens less urgent work adds to a step only while latency calls (priority
class 0) run (the mixed workload's bulk jobs; here every call is class 0, so it never binds).

The capped baseline's budget, 256 tokens on the GPU: a step of an 8B model on an H100 with 256
new tokens is still close to bound by reading the 16 GB of weights (~5 ms), so prefill chunks of
that size barely stretch the decode steps they ride with, a usual latency-oriented chunked-prefill
setting. parrotlet's cap for bulk work, 1024 tokens: measured in the mixed workload on the H100
(2026-12-07), bulk prefill in 256-token pieces kept the chats slower for longer (8.95 ms a chat
token against 7.80 at 1024, the jobs 1.58 s against 1.28). The full budget, 8192 tokens,
prefills eight 1024-token chunks per step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from parrotlet.bench.apps import PARROTLET, REQUEST_LEVEL, App, fixed_length, run_apps
from parrotlet.bench.report import Ratio, Report
from parrotlet.bench.setup import Bench
from parrotlet.bench.synthetic import SyntheticText
from parrotlet.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from parrotlet.graph.ir import Call, Graph, Input, Output, PerfCriterion, Text, Transform, Variable
from parrotlet.serve.config import ServeConfig

FULL = dict(
    instruction_tokens=64,
    chunk_tokens=1024,
    map_output=50,
    reduce_output=50,
    num_maps=[8, 16, 32],
    delays=[0.0, 0.25],
    full_budget=8192,
    capped_budget=256,  # the request-level capped baseline's budget
    latency_cap=1024,  # parrotlet's cap on bulk tokens a step while latency calls run
)
SMOKE = dict(
    instruction_tokens=8,
    chunk_tokens=32,
    map_output=4,
    reduce_output=4,
    num_maps=[4],
    delays=[0.0, 0.05],
    full_budget=512,
    capped_budget=16,
    latency_cap=64,
    cpu_kv_cache_bytes=1 << 26,  # plenty for the tiny model; allocates fast
)
MAP_TAIL = "\nSummary of this part:"
REDUCE_HEAD = "Combine these summaries into one:\n"
REDUCE_TAIL = "\nSummary of the document:"


@dataclass(frozen=True)
class Variant:
    """One way of serving: the ServeCore flags, the engine it runs on, and the client mode."""

    config: ServeConfig
    engine: str  # a key of `engines()`
    request_level: bool


VARIANTS = {
    "parrotlet": Variant(PARROTLET, "parrotlet", request_level=False),
    "no prefix sharing": Variant(replace(PARROTLET, prefix_sharing=False), "parrotlet", False),
    "request-level": Variant(REQUEST_LEVEL, "uncapped", request_level=True),
    "request-level capped": Variant(REQUEST_LEVEL, "capped", request_level=True),
}
TARGETS = {"request-level": 1.3, "request-level capped": 2.5, "no prefix sharing": None}


def engines(sizes: dict) -> dict[str, EngineConfig]:
    """parrotlet's engine (full budget, bulk work capped while latency work runs) and the two
    baselines' engines."""
    full, capped, cap = sizes["full_budget"], sizes["capped_budget"], sizes["latency_cap"]
    cache = CacheConfig(cpu_kv_cache_bytes=sizes.get("cpu_kv_cache_bytes", 1 << 30))

    def engine(budget: int, latency_cap: int | None) -> EngineConfig:
        scheduler = SchedulerConfig(budget, latency_max_num_batched_tokens=latency_cap)
        return EngineConfig(cache=cache, scheduler=scheduler)

    return {
        "parrotlet": engine(full, cap),
        "uncapped": engine(full, None),
        "capped": engine(capped, None),
    }


def map_reduce_app(
    text: SyntheticText,
    num_maps: int,
    sizes: dict,
    criterion: PerfCriterion = PerfCriterion.LATENCY,
    arrival: float = 0.0,
) -> App:
    """`num_maps` maps (shared instruction + own chunk) joined into one reduce; `final` is the
    sink, fetched with `criterion`."""
    instruction = Text(text.text(sizes["instruction_tokens"]))
    chunks = tuple(Variable(f"chunk{i}", text.text(sizes["chunk_tokens"])) for i in range(num_maps))
    maps = tuple(
        Call(
            f"map{i}",
            (
                instruction,
                Input(f"chunk{i}"),
                Text(MAP_TAIL),
                Output(f"summary{i}", fixed_length(sizes["map_output"])),
            ),
            chat=False,
        )
        for i in range(num_maps)
    )
    summaries = tuple(f"summary{i}" for i in range(num_maps))
    join = Transform("join", "join", summaries, "summaries", {"sep": "\n"})
    reduce = Call(
        "reduce",
        (
            Text(REDUCE_HEAD),
            Input("summaries"),
            Text(REDUCE_TAIL),
            Output("final", fixed_length(sizes["reduce_output"])),
        ),
        chat=False,
    )
    graph = Graph(chunks, (*maps, reduce), (join,))
    return App(graph, {"final": criterion}, arrival=arrival, kind="map-reduce")


async def warm_up(
    cores: dict, text: SyntheticText, variants: dict[str, Variant], sizes: dict
) -> None:
    """One job per core with the workload's chunks (4 maps, 2-token outputs), so no measured run
    pays a first-use cost, the long prefill steps' included."""
    app = map_reduce_app(text, 4, dict(sizes, map_output=2, reduce_output=2))
    for name, core in cores.items():
        await run_apps(core, [app], "warmup", request_level=variants[name].request_level)


async def run(bench: Bench, smoke: bool) -> Report:
    sizes = SMOKE if smoke else FULL
    text = SyntheticText(bench.tokenizer, seed=2)
    apps = {n: map_reduce_app(text, n, sizes) for n in sizes["num_maps"]}
    report = Report("map-reduce", bench.spec.device, bench.spec.model_name, params=sizes)
    times: dict[tuple[str, str], float] = {}
    for engine_name, engine in engines(sizes).items():
        variants = {n: v for n, v in VARIANTS.items() if v.engine == engine_name}
        configs = {n: v.config for n, v in variants.items()}
        async with bench.cores(configs, engine=engine) as cores:
            await warm_up(cores, text, variants, sizes)
            for name, variant in variants.items():
                for num_maps, app in apps.items():
                    for delay in sizes["delays"]:
                        point = f"{num_maps} maps, {delay * 1000:g} ms"
                        (result,) = await run_apps(
                            cores[name],
                            [app],
                            f"{name}-{point}",
                            request_level=variant.request_level,
                            delay=delay,
                        )
                        times[name, point] = result.latency
                        report.rows[f"{name}: {point}"] = {
                            "completion_s": result.latency,
                            "requests": result.requests,
                        }
    report.ratios = ratios(times)
    return report


def ratios(times: dict[tuple[str, str], float]) -> list[Ratio]:
    """Per point: each baseline's completion time over parrotlet's."""
    points = [p for v, p in times if v == "parrotlet"]
    return [
        Ratio(
            f"{point}: {base} / parrotlet completion",
            times[base, point] / times["parrotlet", point],
            target,
        )
        for point in points
        for base, target in TARGETS.items()
    ]
