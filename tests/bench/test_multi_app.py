"""The multi-app workload: seeded Poisson arrivals, the four app shapes, the sustainable-rate
rule, equal outputs at app level and request level on two engines, and the smoke run."""

from __future__ import annotations

import random

import pytest

from parrotlet.bench.apps import PARROTLET, REQUEST_LEVEL, run_apps
from parrotlet.bench.workloads import multi_app
from parrotlet.bench.workloads.multi_app import (
    KINDS,
    SMOKE,
    next_probe,
    poisson_apps,
    poisson_arrivals,
    sustainable_rate,
    system_prompts,
)
from parrotlet.graph.ir import Input, Output, Text

pytestmark = pytest.mark.anyio


def make_apps(synthetic):
    systems = system_prompts(synthetic, SMOKE)
    return systems, {
        kind: multi_app.BUILDERS[kind](synthetic, systems[kind], SMOKE) for kind in KINDS
    }


def num_tokens(bench, text: str) -> int:
    return len(bench.tokenizer.encode(text, add_special_tokens=False))


def inputs(call) -> list[str]:
    return [s.var for s in call.segments if isinstance(s, Input)]


def test_poisson_arrivals_are_exact_for_a_seed():
    assert poisson_arrivals(2.0, 5, seed=0) == pytest.approx(
        [0.0, 0.9303035555326117, 1.6396181320184926, 1.912474704789289, 2.062295860896196],
        abs=1e-12,
    )
    rng, expected, t = random.Random(3), [], 0.0
    for _ in range(20):
        expected.append(t)
        t += rng.expovariate(5.0)
    assert poisson_arrivals(5.0, 20, seed=3) == expected
    # one seed, one pattern: twice the rate halves every arrival time
    assert poisson_arrivals(10.0, 20, seed=3) == pytest.approx([a / 2 for a in expected])
    assert poisson_arrivals(5.0, 0, seed=3) == []
    with pytest.raises(ValueError, match="rate must be > 0"):
        poisson_arrivals(0.0, 3, seed=0)


def test_app_shapes_calls_dependencies_and_prompt_sizes(tiny_bench, synthetic):
    systems, apps = make_apps(synthetic)
    for kind, n in zip(KINDS, SMOKE["system_tokens"], strict=True):
        assert num_tokens(tiny_bench, systems[kind]) == n
        # every call of an app starts with that app's own system prompt
        assert {c.segments[0] for c in apps[kind].graph.calls} == {Text(systems[kind])}
    firsts = {
        tuple(tiny_bench.tokenizer.encode(s, add_special_tokens=False)[:16])
        for s in systems.values()
    }
    assert len(firsts) == 4  # the four system prompts differ from their first block

    chat, chain, mr, qa = (apps[k].graph for k in KINDS)
    assert [c.id for c in chat.calls] == ["chat"] and inputs(chat.calls[0]) == ["user"]
    assert [c.id for c in chain.calls] == ["step0", "step1"]
    assert [inputs(c) for c in chain.calls] == [["task"], ["task", "step0"]]
    assert list(apps["chain"].fetch) == ["step1"]
    assert [c.id for c in mr.calls] == ["map0", "map1", "reduce"]
    assert [inputs(c) for c in mr.calls] == [["chunk0"], ["chunk1"], ["notes"]]
    assert [(t.inputs, t.output) for t in mr.transforms] == [(("note0", "note1"), "notes")]
    assert [c.id for c in qa.calls] == ["answer0", "answer1"]
    assert list(apps["qa"].fetch) == ["a0", "a1"]
    assert [num_tokens(tiny_bench, v.value) for v in mr.variables] == [16, 16]
    assert [num_tokens(tiny_bench, v.value) for v in qa.variables] == [8, 8]
    # output lengths: chat 4; chain 2 x 3; map-reduce 2 x 3 + 4; qa 2 x 3
    assert [apps[k].output_tokens for k in KINDS] == [4, 6, 10, 6]
    assert all(isinstance(c.segments[-1], Output) for a in apps.values() for c in a.graph.calls)


def test_poisson_apps_kinds_and_arrivals_follow_the_seed(synthetic):
    systems = system_prompts(synthetic, SMOKE)
    apps = poisson_apps(synthetic, systems, SMOKE, rate=4.0, num=8)
    assert [a.kind for a in apps] == random.Random(SMOKE["seed"] + 1).choices(KINDS, k=8)
    assert [a.arrival for a in apps] == poisson_arrivals(4.0, 8, SMOKE["seed"])
    users = [v.value for a in apps for v in a.graph.variables]
    assert len(set(users)) == len(users)  # every request brings its own user text


def test_sustainable_rate_rule():
    latency = {1.0: 0.1, 2.0: 0.2, 4.0: 0.5, 8.0: 0.3}
    assert sustainable_rate(latency, target=0.4) == 2.0  # 8 meets it, but only after 4 missed
    assert sustainable_rate(latency, target=0.5) == 8.0  # equal to the target still meets it
    assert sustainable_rate(latency, target=0.2) == 2.0
    assert sustainable_rate(latency, target=0.05) is None  # none sustainable
    assert sustainable_rate({}, target=1.0) is None
    with pytest.raises(ValueError, match="target must be > 0"):
        sustainable_rate(latency, target=0.0)


def test_next_probe_bisects_between_the_last_met_and_the_first_missed_rate():
    assert next_probe({1.0: 0.1, 2.0: 0.2, 4.0: 0.5}, target=0.4) == 2.83
    assert next_probe({1.0: 0.1, 2.0: 0.2, 4.0: 0.5, 2.83: 0.3}, target=0.4) == 3.36
    assert next_probe({1.0: 0.1, 2.0: 0.2}, target=0.4) is None  # no miss to bisect towards
    assert next_probe({1.0: 0.5, 2.0: 0.6}, target=0.4) is None  # nothing sustained
    assert next_probe({1.0: 0.1, 1.001: 0.5}, target=0.4) is None  # adjacent at 3 digits


async def test_extend_doubles_past_the_grid_until_a_variant_misses():
    """Variant a met the target at the whole grid: doubled until 6.4 req/s misses; b missed at
    4.0 and is left alone; c met everything up to the cap (the next rate, 16.0, would pass it)."""
    probed: list[tuple[str, float]] = []

    async def probe(name: str, rate: float) -> float:
        probed.append((name, rate))
        return 0.05 * rate

    measured = {
        "a": {0.4: 0.02, 0.8: 0.04, 1.6: 0.08},
        "b": {0.4: 0.02, 0.8: 0.04, 4.0: 0.5},
        "c": {8.0: 0.1},
    }
    await multi_app.extend(measured, target=0.3, max_rate=12.0, probe=probe)

    assert probed == [("a", 3.2), ("a", 6.4)]
    assert measured["a"][6.4] == pytest.approx(0.32) and sustainable_rate(measured["a"], 0.3) == 3.2
    assert measured["b"] == {0.4: 0.02, 0.8: 0.04, 4.0: 0.5}
    assert measured["c"] == {8.0: 0.1}


async def test_refine_runs_the_probes_in_bisection_order():
    """A variant whose latency crosses the target at 3.0 req/s: three bisections from the grid."""
    probed: list[tuple[str, float]] = []

    async def probe(name: str, rate: float) -> float:
        probed.append((name, rate))
        return 0.1 * rate

    measured = {"a": {1.0: 0.1, 2.0: 0.2, 4.0: 0.4}, "b": {1.0: 0.1, 2.0: 0.2}}
    await multi_app.refine(measured, target=0.3, steps=3, probe=probe)

    assert probed == [("a", 2.83), ("a", 3.36), ("a", 3.08)]
    assert sustainable_rate(measured["a"], 0.3) == 2.83 and measured["b"] == {1.0: 0.1, 2.0: 0.2}


async def test_app_level_outputs_equal_request_level_on_two_engines(tiny_bench, synthetic):
    _, apps = make_apps(synthetic)
    async with tiny_bench.cores({"app": PARROTLET, "req": REQUEST_LEVEL}, num_engines=2) as cores:
        assert len(cores["app"].engines) == 2
        for kind, app in apps.items():
            (app_level,) = await run_apps(cores["app"], [app], "t-app", request_level=False)
            (req_level,) = await run_apps(cores["req"], [app], "t-req", request_level=True)
            assert app_level.outputs == req_level.outputs, kind
            assert set(app_level.outputs) == set(app.fetch)
            assert req_level.requests == len(app.graph.calls)


async def test_smoke_run_reports_every_rate_and_the_ratio(tiny_bench):
    report = await multi_app.run(tiny_bench, smoke=True)
    rates = report.params["rates"]
    assert len(rates) == 2 and rates[1] == pytest.approx(4 * rates[0], rel=0.01)
    expected = ["unloaded (request-level)"]
    expected += [f"parrotlet: {rates[0]:g} req/s", f"request-level: {rates[0]:g} req/s"]
    expected += [f"request-level: {rates[1]:g} req/s", f"parrotlet: {rates[1]:g} req/s"]
    expected += ["parrotlet: sustainable", "request-level: sustainable"]
    assert list(report.rows) == expected  # the loose smoke target: no variant stops early
    for rate in rates:
        row = report.rows[f"parrotlet: {rate:g} req/s"]
        assert row["requests"] == 8
        assert row["prefix_hit"] > 0.5  # the warm-up burst cached the system prompts
        assert len(report.params["engine_prefix_hit"][f"parrotlet: {rate:g} req/s"]) == 2
    assert report.rows["parrotlet: sustainable"] == {"rate_req_s": rates[1]}
    assert [r.name for r in report.ratios] == ["sustainable rate: parrotlet / request-level"]
    assert report.ratios[0].value == 1.0


async def test_warm_up_caches_every_system_prompt_on_every_engine(tiny_bench, synthetic):
    systems = system_prompts(synthetic, SMOKE)
    configs = {"parrotlet": PARROTLET, "request-level": REQUEST_LEVEL}
    async with tiny_bench.cores(configs, num_engines=2) as cores:
        await multi_app.warm_up(cores, synthetic, systems, SMOKE)
        for name, core in cores.items():
            for engine in core.engines:
                held = [
                    engine.cached_prefix_len(core.assembler.encode(s), f"multi-app-{name}")
                    for s in systems.values()
                ]
                assert held == [n // 16 * 16 for n in SMOKE["system_tokens"]]
                assert engine.cached_prefix_len(core.assembler.encode(systems["chat"]), "x") == 0
