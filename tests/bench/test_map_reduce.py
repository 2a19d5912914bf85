"""Map-reduce workload: the job's graph, its exact prompts in both serving modes, the engines of
each variant, and the smoke report."""

from __future__ import annotations

import math

import pytest

from parrotlet.bench.apps import PARROTLET, REQUEST_LEVEL, run_apps
from parrotlet.bench.workloads import map_reduce
from parrotlet.bench.workloads.map_reduce import MAP_TAIL, SMOKE, engines, map_reduce_app
from parrotlet.graph.ir import Input, PerfCriterion, Transform

pytestmark = pytest.mark.anyio

SIZES = dict(SMOKE, instruction_tokens=20)


def n_tokens(bench, text: str) -> int:
    return len(bench.tokenizer.encode(text, add_special_tokens=False))


def test_graph_has_n_maps_joined_into_one_reduce(synthetic):
    app = map_reduce_app(synthetic, 3, SIZES)
    graph = app.graph
    assert [c.id for c in graph.calls] == ["map0", "map1", "map2", "reduce"]
    assert [c.inputs for c in graph.calls] == [
        ("chunk0",),
        ("chunk1",),
        ("chunk2",),
        ("summaries",),
    ]
    assert graph.transforms == (
        Transform("join", "join", ("summary0", "summary1", "summary2"), "summaries", {"sep": "\n"}),
    )
    assert graph.calls[0].segments[0] == graph.calls[2].segments[0]  # the shared instruction
    assert graph.calls[3].segments[1] == Input("summaries")
    assert app.fetch == {"final": PerfCriterion.LATENCY}
    assert app.output_tokens == 3 * 4 + 4


async def test_map_prompts_are_exact_and_both_modes_compute_the_same(
    tiny_bench, synthetic, admissions
):
    app = map_reduce_app(synthetic, 3, SIZES)
    map_prompt = 20 + 32 + n_tokens(tiny_bench, MAP_TAIL)
    assert map_prompt == 58
    results, prompts = {}, {}
    async with tiny_bench.cores({"app": PARROTLET, "req": REQUEST_LEVEL}) as cores:
        for mode in ("app", "req"):
            admissions.clear()
            (results[mode],) = await run_apps(
                cores[mode], [app], f"mr-{mode}", request_level=mode == "req"
            )
            prompts[mode] = [n for n, _, _ in admissions]
    assert results["app"].outputs == results["req"].outputs
    assert prompts["app"][:3] == prompts["req"][:3] == [map_prompt] * 3
    assert prompts["app"][3] == prompts["req"][3]  # the reduce over the joined summaries
    assert (results["app"].requests, results["req"].requests) == (2, 4)


def test_each_variant_gets_its_engine_budget():
    budgets = {
        name: (e.scheduler.max_num_batched_tokens, e.scheduler.latency_max_num_batched_tokens)
        for name, e in engines(SMOKE).items()
    }
    assert budgets == {"parrotlet": (512, 64), "uncapped": (512, None), "capped": (16, None)}
    full = {name: e.scheduler for name, e in engines(map_reduce.FULL).items()}
    parrotlet, capped = full["parrotlet"], full["capped"]
    budget, cap = parrotlet.max_num_batched_tokens, parrotlet.latency_max_num_batched_tokens
    assert (budget, cap, capped.max_num_batched_tokens) == (8192, 1024, 256)


async def test_smoke_report_has_every_variant_and_ratio(tiny_bench):
    report = await map_reduce.run(tiny_bench, smoke=True)
    points = ["4 maps, 0 ms", "4 maps, 50 ms"]
    variants = ["parrotlet", "no prefix sharing", "request-level", "request-level capped"]
    assert list(report.rows) == [f"{v}: {p}" for v in variants for p in points]
    requests = {name: row["requests"] for name, row in report.rows.items()}
    assert requests == {f"{v}: {p}": 5 if "request" in v else 2 for v in variants for p in points}
    assert [(r.name, r.target) for r in report.ratios] == [
        (f"{p}: {base} / parrotlet completion", target)
        for p in points
        for base, target in [("request-level", 1.3), ("request-level capped", 2.5),
                             ("no prefix sharing", None)]
    ]  # fmt: skip
    values = [row["completion_s"] for row in report.rows.values()] + [
        r.value for r in report.ratios
    ]
    assert all(math.isfinite(v) and v > 0 for v in values)
