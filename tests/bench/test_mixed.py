"""Mixed workload: Poisson chats fetched for latency, map-reduce jobs fetched for throughput; the
engine sees chats in priority class 0 and bulk work in class 2; the smoke report."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from parrotlet.bench.apps import PARROTLET, REQUEST_LEVEL, run_apps
from parrotlet.bench.workloads import mixed
from parrotlet.bench.workloads.map_reduce import MAP_TAIL
from parrotlet.bench.workloads.mixed import SMOKE, bulk_apps, chat_apps
from parrotlet.engine.config import SchedulerConfig
from parrotlet.graph.ir import PerfCriterion

pytestmark = pytest.mark.anyio


def test_chats_arrive_as_a_seeded_poisson_stream(tiny_bench, synthetic):
    chats = chat_apps(synthetic, SMOKE, seed=3)
    arrivals = [c.arrival for c in chats]
    assert len(chats) == 6
    assert arrivals == sorted(arrivals) and arrivals[0] > 0
    assert arrivals == [c.arrival for c in chat_apps(synthetic, SMOKE, seed=3)]
    assert arrivals != [c.arrival for c in chat_apps(synthetic, SMOKE, seed=4)]
    (call,) = chats[0].graph.calls
    prompt = call.segments[0].text
    assert len(tiny_bench.tokenizer.encode(prompt, add_special_tokens=False)) == 24
    assert chats[0].fetch == {"reply": PerfCriterion.LATENCY}
    assert chats[0].output_tokens == 4
    (job,) = bulk_apps(synthetic, SMOKE)
    assert job.fetch == {"final": PerfCriterion.THROUGHPUT}
    assert (job.arrival, len(job.graph.calls)) == (0.0, 5)


async def test_chats_run_in_class_0_and_bulk_in_class_2(tiny_bench, synthetic, admissions):
    apps = bulk_apps(synthetic, SMOKE) + chat_apps(synthetic, dict(SMOKE, num_chats=2))
    tail = len(tiny_bench.tokenizer.encode(MAP_TAIL, add_special_tokens=False))
    map_prompt = 8 + 32 + tail
    async with tiny_bench.cores({"app": PARROTLET, "req": REQUEST_LEVEL}) as cores:
        await run_apps(cores["app"], apps, "mixed-app", request_level=False)
        app_level = sorted(admissions)
        admissions.clear()
        await run_apps(cores["req"], apps, "mixed-req", request_level=True)
        request_level = sorted(admissions)
    reduce_prompt = next(n for n, cls, grouped in app_level if cls == 2 and not grouped)
    expected = [(24, 0, False)] * 2 + [(map_prompt, 2, True)] * 4 + [(reduce_prompt, 2, False)]
    assert app_level == sorted(expected)
    assert request_level == [(n, 0, False) for n, _, _ in app_level]  # FCFS: all priority 0


def test_each_row_runs_on_its_engine_budget_and_cap():
    schedulers = {name: e.scheduler for name, e in mixed.mixed_engines(SMOKE).items()}
    budgets = {
        name: (s.max_num_batched_tokens, s.latency_max_num_batched_tokens)
        for name, s in schedulers.items()
    }
    assert budgets == {
        "parrotlet": (512, 64),
        "parrotlet budget 512 cap 4": (512, 4),
        "parrotlet budget 64 cap 32": (64, 32),
        "uncapped": (512, None),
        "capped": (16, None),
    }
    assert {row: engine for row, (_, _, engine) in mixed.runs(SMOKE).items()} == {
        "chats alone": "parrotlet",
        "parrotlet": "parrotlet",
        "parrotlet, budget 512 cap 4": "parrotlet budget 512 cap 4",
        "parrotlet, budget 64 cap 32": "parrotlet budget 64 cap 32",
        "request-level": "uncapped",
        "request-level capped": "capped",
    }


def test_full_rows_include_the_serve_default_scheduler():
    assert mixed.FULL["other_engines"][-1] == (2048, None)
    assert "parrotlet, budget 2048 no cap" in mixed.runs(mixed.FULL)
    scheduler = mixed.mixed_engines(mixed.FULL)["parrotlet budget 2048 no cap"].scheduler
    assert scheduler == replace(SchedulerConfig(), max_num_seqs=scheduler.max_num_seqs)


async def test_smoke_report_has_every_run_and_ratio(tiny_bench):
    report = await mixed.run(tiny_bench, smoke=True)
    assert list(report.rows) == [
        "chats alone",
        "parrotlet",
        "parrotlet, budget 512 cap 4",
        "parrotlet, budget 64 cap 32",
        "request-level",
        "request-level capped",
    ]
    counts = {"computed_tokens", "cached_tokens", "steps", "graph_steps", "tiled_steps",
              "piecewise_steps"}  # fmt: skip
    counts |= {"step_s", "device_wait_s"}
    chats = {"chat_token_s", "chat_latency_s"} | counts
    assert set(report.rows["chats alone"]) == chats
    assert all(set(row) == chats | {"map_reduce_s"} for row in list(report.rows.values())[1:])
    # each chat computes its 24 prompt tokens and 3 of its 4 outputs (the last is not fed back)
    assert report.rows["chats alone"]["computed_tokens"] == 6 * (24 + 3)
    mixed_work = {row["computed_tokens"] for row in list(report.rows.values())[1:]}
    assert len(mixed_work) == 1 and mixed_work.pop() > 6 * (24 + 3)  # every variant, same work
    assert [(r.name, r.target) for r in report.ratios] == [
        ("chat per-token latency: chats alone / parrotlet mixed (higher is better)", 1 / 1.1),
        ("map-reduce completion: request-level / parrotlet mixed", 1.0),
        ("chat per-token latency: request-level / parrotlet mixed", None),
        ("chat per-token latency: request-level capped / parrotlet mixed", None),
        ("map-reduce completion: request-level capped / parrotlet mixed", None),
        (
            "budget 512 cap 4: chat per-token latency, chats alone / parrotlet (higher is better)",
            1 / 1.1,
        ),
        ("budget 512 cap 4: map-reduce completion, request-level / parrotlet", 1.0),
        (
            "budget 64 cap 32: chat per-token latency, chats alone / parrotlet (higher is better)",
            1 / 1.1,
        ),
        ("budget 64 cap 32: map-reduce completion, request-level / parrotlet", 1.0),
    ]
    values = [v for row in report.rows.values() for k, v in row.items() if k.startswith("chat_")]
    values += [row["map_reduce_s"] for row in list(report.rows.values())[1:]]
    values += [r.value for r in report.ratios]
    assert all(math.isfinite(v) and v > 0 for v in values)
