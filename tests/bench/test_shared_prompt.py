"""Shared-prompt workload: the graph it sends, the work each variant makes the engine do (the
shared prompt prefilled once and attended once per step, or per request), and its report."""

from __future__ import annotations

import pytest

from parrotlet.bench.apps import run_apps
from parrotlet.bench.workloads import shared_prompt
from parrotlet.bench.workloads.shared_prompt import VARIANTS, engine_config, shared_prompt_apps
from parrotlet.graph.ir import Input, Output, PerfCriterion, Text

pytestmark = pytest.mark.anyio

N, SHARED, QUESTION = 4, 160, 12  # 160 = 10 blocks of 16


def make_apps(synthetic):
    return shared_prompt_apps(synthetic, N, SHARED, QUESTION, (4, 8), seed=5)


async def run_variant(bench, name: str, apps):
    """Run `apps` as variant `name` on fresh engines; return (outputs, engine work, prefix
    groups the attention backend was planned with, per step)."""
    config = engine_config(VARIANTS[name], shared_prompt.SMOKE | {"num_requests": N})
    async with bench.cores({name: VARIANTS[name].serve}, engine=config) as cores:
        engine = cores[name].engines[0].async_engine.engine
        planned = []
        plan = engine.runner.attention.plan
        engine.runner.attention.plan = lambda md: (planned.append(md.prefix_groups), plan(md))
        results = await run_apps(cores[name], apps, name, request_level=name == "request-level")
        stats = engine.stats()
    groups = {(len(g.seq_indices), g.num_blocks) for step in planned for g in step}
    work = (stats.num_computed_tokens, stats.num_prompt_tokens, stats.num_cached_prompt_tokens)
    return [r.outputs["answer"] for r in results], work, groups


async def test_apps_share_one_system_prompt_and_differ_in_question(tiny_bench, synthetic):
    apps = make_apps(synthetic)
    assert len(apps) == N
    calls = [app.graph.calls for app in apps]
    assert all(len(c) == 1 for c in calls)
    systems = {c[0].segments[0] for c in calls}
    assert len(systems) == 1  # the very same Text in every app
    assert [type(s) for s in calls[0][0].segments] == [Text, Input, Output]
    questions = [app.graph.variables[0].value for app in apps]
    assert len(set(questions)) == N
    encode = lambda t: tiny_bench.tokenizer.encode(t, add_special_tokens=False)  # noqa: E731
    assert len(encode(systems.pop().text)) == SHARED
    assert [len(encode(q)) for q in questions] == [QUESTION] * N
    assert [app.output_tokens for app in apps] == [8, 6, 6, 8]  # seeded, within 4..8
    assert [app.output_tokens for app in make_apps(synthetic)] == [8, 6, 6, 8]
    assert all(app.fetch == {"answer": PerfCriterion.LATENCY} and app.arrival == 0 for app in apps)


async def test_variants_compute_the_shared_prompt_once_or_per_request(tiny_bench, synthetic):
    apps = make_apps(synthetic)
    decodes = sum(app.output_tokens - 1 for app in apps)  # the last sampled token is not fed back
    prompts = N * (SHARED + QUESTION)
    runs = {name: await run_variant(tiny_bench, name, apps) for name in VARIANTS}
    outputs = runs["parrotlet"][0]
    assert all(run[0] == outputs for run in runs.values())
    # parrotlet: a pin prefills the 160 shared tokens once; each request hits them in the cache
    # and computes its question; its decode steps attend the 10 shared blocks as one group of 4.
    once = (SHARED + N * QUESTION + decodes, SHARED + prompts, N * SHARED)
    assert runs["parrotlet"][1] == once
    assert runs["parrotlet"][2] == {(4, 10), (2, 10)}  # two leave after 6 tokens
    assert runs["no cascade"][1:] == (once, set())  # the same blocks, attended per request
    assert runs["no sharing"][1:] == ((prompts + decodes, prompts, 0), set())


async def test_smoke_report_has_every_variant_and_ratio(tiny_bench):
    report = await shared_prompt.run(tiny_bench, True)
    assert list(report.rows) == ["parrotlet", "request-level", "no cascade", "no sharing"]
    assert all(
        set(row)
        == {"per_token_s", "latency_s", "total_s", "computed_tokens", "cached_tokens", "steps",
            "graph_steps", "tiled_steps", "piecewise_steps", "step_s", "device_wait_s"}
        for row in report.rows.values()
    )  # fmt: skip
    assert all(row["steps"] > 0 and row["graph_steps"] == 0 for row in report.rows.values())
    assert all(
        0 <= row["device_wait_s"] < row["step_s"] < row["total_s"] for row in report.rows.values()
    )
    assert [(r.name, r.target) for r in report.ratios] == [
        ("no sharing / parrotlet per-token latency", 3.0),
        ("no cascade / parrotlet per-token latency", 2.0),
        ("request-level / parrotlet per-token latency", None),
    ]
    assert report.rows["parrotlet"]["cached_tokens"] == 8 * 160
    assert report.rows["no sharing"]["cached_tokens"] == 0
