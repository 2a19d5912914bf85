"""Multi-agent workload: the program graph (roles, dependencies, exact prompt sizes), the same
outputs app-level and request-level, role prompts prefilled once per stage, and its report."""

from __future__ import annotations

import pytest

from parrotlet.bench.apps import PARROTLET, REQUEST_LEVEL, run_apps
from parrotlet.bench.workloads import multi_agent
from parrotlet.bench.workloads.multi_agent import NO_SHARING, Roles, engine_configs, program_app
from parrotlet.graph.ir import PerfCriterion, Text

pytestmark = pytest.mark.anyio

N, ROLE, TASK, FILE = 3, 90, 8, 4
OUT = dict(design=4, code=5, review=3)


def make_program(synthetic, roles: Roles, rounds: int):
    return program_app(
        synthetic, roles, N, task_tokens=TASK, file_tokens=FILE, rounds=rounds, **OUT
    )


def prompt_sizes(tokenizer) -> dict[str, int]:
    """Exact prompt tokens of each kind of call, from the template text and the output lengths."""
    n = lambda t: len(tokenizer.encode(t, add_special_tokens=False))  # noqa: E731
    task, design, file, code, review = (
        n(f"\n{w}:") for w in ("Task", "Design", "File", "Code", "Review")
    )
    coder = ROLE + design + OUT["design"] + file + FILE + code
    return {
        "architect": ROLE + task + TASK + design,
        "coder": coder,
        "reviewer": ROLE + code + OUT["code"] + review,
        "reviser": coder + OUT["code"] + review + OUT["review"] + code,
        "coder_shared": (ROLE + design + OUT["design"] + file) // 16 * 16,  # whole blocks
    }


async def test_program_graph_roles_and_dependencies(synthetic):
    roles = Roles.synthetic(synthetic, ROLE)
    app = make_program(synthetic, roles, rounds=2)
    ids = [c.id for c in app.graph.calls]
    assert ids == ["architect", "code0_0", "code1_0", "code2_0", "review0_0", "review1_0",
                   "review2_0", "code0_1", "code1_1", "code2_1", "review0_1", "review1_1",
                   "review2_1", "code0_2", "code1_2", "code2_2"]  # fmt: skip
    inputs = {c.id: c.inputs for c in app.graph.calls}
    assert inputs["architect"] == ("task",)
    assert inputs["code1_0"] == ("design", "file1")
    assert inputs["review1_1"] == ("code1_1",)
    assert inputs["code1_2"] == ("design", "file1", "code1_1", "review1_1")
    roles_of = {c.id: c.segments[0] for c in app.graph.calls}
    assert {i for i, r in roles_of.items() if r == Text(roles.coder)} == {
        f"code{i}_{v}" for i in range(N) for v in range(3)
    }
    assert {i for i, r in roles_of.items() if r == Text(roles.reviewer)} == {
        f"review{i}_{r}" for i in range(N) for r in range(2)
    }
    assert app.fetch == {f"code{i}_2": PerfCriterion.LATENCY for i in range(N)}
    assert app.output_tokens == OUT["design"] + 3 * N * OUT["code"] + 2 * N * OUT["review"]


async def test_outputs_equal_and_prompts_exact(tiny_bench, synthetic):
    app = make_program(synthetic, Roles.synthetic(synthetic, ROLE), rounds=1)
    sizes = prompt_sizes(tiny_bench.tokenizer)
    shared, unshared = engine_configs(multi_agent.SMOKE)
    async with tiny_bench.cores({"app": PARROTLET, "req": REQUEST_LEVEL}, engine=shared) as cores:
        engine = cores["app"].engines[0]
        (app_level,) = await run_apps(cores["app"], [app], "app", request_level=False)
        before = engine.stats().num_prompt_tokens
        (request_level,) = await run_apps(cores["req"], [app], "req", request_level=True)
        prompts = engine.stats().num_prompt_tokens - before
        shares = cores["app"].executor.counters.prefixes_shared
    async with tiny_bench.cores({"none": NO_SHARING}, engine=unshared) as cores:
        (unshared_run,) = await run_apps(cores["none"], [app], "none", request_level=False)
        assert cores["none"].executor.counters.prefixes_shared == 0
    assert app_level.outputs == request_level.outputs == unshared_run.outputs
    assert set(app_level.outputs) == {"code0_1", "code1_1", "code2_1"}
    assert request_level.requests == 1 + 3 * N
    assert prompts == sizes["architect"] + N * (sizes["coder"] + sizes["reviewer"]
                                                + sizes["reviser"])  # fmt: skip
    assert shares == 3  # the coders, the reviewers, the revising coders


async def test_coders_prefill_their_role_prompt_once(tiny_bench, synthetic):
    """Architect then N coders: with sharing the coders' common prefix is computed once."""
    app = make_program(synthetic, Roles.synthetic(synthetic, ROLE), rounds=0)
    sizes = prompt_sizes(tiny_bench.tokenizer)
    computed = {}
    for name, config in zip(("shared", "unshared"), engine_configs(multi_agent.SMOKE), strict=True):
        serve = PARROTLET if name == "shared" else NO_SHARING
        async with tiny_bench.cores({name: serve}, engine=config) as cores:
            await run_apps(cores[name], [app], name, request_level=False)
            stats = cores[name].engines[0].stats()
            computed[name] = (stats.num_computed_tokens, stats.num_cached_prompt_tokens)
    decodes = OUT["design"] - 1 + N * (OUT["code"] - 1)  # the last token is not fed back
    every = sizes["architect"] + N * sizes["coder"] + decodes
    shared = sizes["coder_shared"]
    assert shared == 96  # 90 role + 3 "\nDesign:" + 4 design + 3 "\nFile:" = 100: 6 blocks
    assert computed == {"shared": (every - (N - 1) * shared, N * shared), "unshared": (every, 0)}


async def test_smoke_report_rows_and_ratios(tiny_bench):
    report = await multi_agent.run(tiny_bench, True)
    variants = ["parrotlet", "request-level 0 ms", "request-level 50 ms"]
    expected = [f"{v}: {n} files" for n in (2, 3) for v in variants]
    assert list(report.rows) == expected + ["no sharing: 2 files", "no sharing: 3 files"]
    assert report.rows["parrotlet: 3 files"]["requests"] == 2
    assert (
        report.rows["request-level 0 ms: 3 files"]["requests"] == 1 + 3 * 3
    )  # architect, 3 coders, reviewers, revisers
    assert [(r.name, r.target) for r in report.ratios] == [
        (f"{n} files: {b} / parrotlet latency", t)
        for n in (2, 3)
        for b, t in (
            ("request-level 0 ms", 3.0),
            ("request-level 50 ms", 3.0),
            ("no sharing", None),
        )
    ]
