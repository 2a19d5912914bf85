"""Shared system prompt (Parrot §8.3): many users of one app ask at once; every request starts
with the same long system prompt. parrotlet prefills that prompt once, shares its KV blocks and
attends it once per decode step: on CUDA through the decode graphs' prefix tiles (parrotlet's
Triton kernel, `graph_prefix_tiles`), on CPU through the reference backend's cascade. The
ablations drop that ("no cascade": the same flashinfer graph decode over the shared blocks),
then all sharing, and request-level serving (on parrotlet's engine) shares only what the
engine's prefix cache finds. Metric: per-token latency.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from parrotlet.bench.apps import (
    PARROTLET,
    REQUEST_LEVEL,
    App,
    AppResult,
    engine_counts,
    fixed_length,
    run_apps,
)
from parrotlet.bench.report import Ratio, Report
from parrotlet.bench.setup import Bench
from parrotlet.bench.synthetic import SyntheticText
from parrotlet.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from parrotlet.graph.ir import Call, Graph, Input, Output, PerfCriterion, Text, Variable
from parrotlet.serve.config import ServeConfig

# FULL: 64 x (5000 + 50 prompt + up to 800 out) tokens. Without sharing the KV peaks when the
# shortest outputs end (step 180): 64 x 5230 tokens = 44 GB at 128 KiB/token (Llama-3-8B bf16),
# inside the ~50 GB pool of an H100, so no variant is slowed by preemption.
# `min_shared`: the engine's shared_prefix_min_tokens; `cpu_kv_bytes`: the KV pool on CPU.
FULL = dict(
    num_requests=64, shared_tokens=5000, question_tokens=50, outputs=(180, 800),
    min_shared=256, cpu_kv_bytes=1 << 30,
)  # fmt: skip
SMOKE = dict(
    num_requests=8, shared_tokens=160, question_tokens=12, outputs=(4, 12),
    min_shared=16, cpu_kv_bytes=1 << 26,
)  # fmt: skip
TARGETS = {"no sharing": 3.0, "no cascade": 2.0, "request-level": None}


@dataclass(frozen=True)
class Variant:
    """One way of serving the workload: the serving layer's flags and the engine's."""

    serve: ServeConfig
    request_level: bool = False
    cascade: bool = True  # engine: attend a shared prefix once per step
    prefix_caching: bool = True  # engine: reuse KV blocks across requests


VARIANTS = {
    "parrotlet": Variant(PARROTLET),
    "request-level": Variant(REQUEST_LEVEL, request_level=True),
    "no cascade": Variant(PARROTLET, cascade=False),
    "no sharing": Variant(
        replace(PARROTLET, prefix_sharing=False), cascade=False, prefix_caching=False
    ),
}


def shared_prompt_apps(
    text: SyntheticText, num_requests: int, shared_tokens: int, question_tokens: int,
    outputs: tuple[int, int], seed: int = 0,
) -> list[App]:  # fmt: skip
    """`num_requests` one-call apps: the shared system prompt, a distinct question, an answer of
    a seeded length in `outputs` (inclusive); all arrive at t=0."""
    system = Text(text.text(shared_tokens))
    rng = random.Random(seed)
    apps = []
    for _ in range(num_requests):
        segments = (
            system,
            Input("question"),
            Output("answer", fixed_length(rng.randint(*outputs))),
        )
        graph = Graph((Variable("question", text.text(question_tokens)),),
                      (Call("answer", segments, chat=False),))  # fmt: skip
        apps.append(App(graph, {"answer": PerfCriterion.LATENCY}, kind="user"))
    return apps


def engine_config(variant: Variant, sizes: dict) -> EngineConfig:
    """Every request decodes in one batch (`max_num_seqs`); sharing flags from `variant`."""
    cache = CacheConfig(
        enable_prefix_caching=variant.prefix_caching, cpu_kv_cache_bytes=sizes["cpu_kv_bytes"]
    )
    return EngineConfig(
        shared_prefix_attention=variant.cascade,
        graph_prefix_tiles=variant.cascade,
        shared_prefix_min_tokens=sizes["min_shared"],
        cache=cache,
        scheduler=SchedulerConfig(max_num_seqs=max(sizes["num_requests"], 64)),
    )


async def run(bench: Bench, smoke: bool) -> Report:
    sizes = SMOKE if smoke else FULL
    text = SyntheticText(bench.tokenizer, seed=2)
    apps = shared_prompt_apps(
        text, sizes["num_requests"], sizes["shared_tokens"], sizes["question_tokens"],
        sizes["outputs"],
    )  # fmt: skip
    warmup = shared_prompt_apps(text, 2, 64, 8, (4, 4))
    report = Report("shared-prompt", bench.spec.device, bench.spec.model_name, params=sizes)
    # Variants on one engine config share a block (fresh engines per block).
    blocks: dict[EngineConfig, list[str]] = {}
    for name, variant in VARIANTS.items():
        config = engine_config(variant, sizes)
        blocks.setdefault(config, []).append(name)
    for config, names in blocks.items():
        async with bench.cores({n: VARIANTS[n].serve for n in names}, engine=config) as cores:
            await run_apps(cores[names[0]], warmup, f"warmup-{names[0]}", request_level=False)
            for name in names:
                stats_before = cores[name].engines[0].stats()
                results = await run_apps(
                    cores[name], apps, name, request_level=VARIANTS[name].request_level
                )
                after = cores[name].engines[0].stats()
                report.rows[name] = _row(results) | engine_counts(stats_before, after)
    base = report.rows["parrotlet"]["per_token_s"]
    for name, target in TARGETS.items():
        value = report.rows[name]["per_token_s"] / base
        report.ratios.append(Ratio(f"{name} / parrotlet per-token latency", value, target))
    return report


def _row(results: list[AppResult]) -> dict[str, float]:
    """Mean per-token latency and latency over requests, and the time the last one took."""
    n = len(results)
    return {
        "per_token_s": sum(r.per_token_latency for r in results) / n,
        "latency_s": sum(r.latency for r in results) / n,
        "total_s": max(r.latency for r in results),
    }
