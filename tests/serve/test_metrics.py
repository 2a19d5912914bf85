"""GET /metrics: Prometheus text exposition of ServeStats, parsed back and checked exactly."""

from __future__ import annotations

import re

import httpx
import pytest

from parrotlet.engine.outputs import EngineStats
from parrotlet.serve.core import ServeCore, ServeStats
from parrotlet.serve.metrics import render_prometheus

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')

Key = tuple[str, tuple[tuple[str, str], ...]]


def parse_prometheus(text: str) -> dict[Key, float]:
    """Samples of a text exposition; asserts each family has HELP then TYPE before its samples."""
    samples: dict[Key, float] = {}
    typed: set[str] = set()
    helped: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split()[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert name in helped and kind in ("counter", "gauge", "summary"), line
            typed.add(name)
        else:
            match = _SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            name, _, inner, value = match.groups()
            family = re.sub(r"_(sum|count)$", "", name) if name not in typed else name
            assert family in typed, f"{name} has no TYPE line"
            labels = tuple(_LABEL.findall(inner or ""))
            samples[(name, labels)] = float(value)
    return samples


def make_stats(**overrides: object) -> ServeStats:
    engine = EngineStats(
        num_waiting=2,
        num_running=3,
        num_blocks=100,
        num_used_blocks=25,
        block_size=16,
        num_computed_tokens=1234,
        num_prompt_tokens=400,
        num_cached_prompt_tokens=100,
        num_preemptions=1,
        num_steps=77,
    )
    fields = dict(
        num_sessions=4,
        client_requests={"submit": 7, "create_session": 5},
        calls_started=9,
        calls_finished=8,
        calls_started_by_server=3,
        calls_requeued=2,
        call_latency={"latency": (5, 2.5), "throughput": (3, 0.75)},
        engines=[engine],
    )
    return ServeStats(**{**fields, **overrides})  # type: ignore[arg-type]


def test_render_exposes_every_counter_with_exact_values() -> None:
    samples = parse_prometheus(render_prometheus(make_stats()))

    engine = (("engine", "0"),)
    assert samples == {
        ("parrotlet_sessions", ()): 4,
        ("parrotlet_client_requests_total", (("kind", "create_session"),)): 5,
        ("parrotlet_client_requests_total", (("kind", "submit"),)): 7,
        ("parrotlet_calls_started_total", ()): 9,
        ("parrotlet_calls_finished_total", ()): 8,
        ("parrotlet_calls_started_by_server_total", ()): 3,
        ("parrotlet_calls_requeued_total", ()): 2,
        ("parrotlet_call_latency_seconds_sum", (("objective", "latency"),)): 2.5,
        ("parrotlet_call_latency_seconds_count", (("objective", "latency"),)): 5,
        ("parrotlet_call_latency_seconds_sum", (("objective", "throughput"),)): 0.75,
        ("parrotlet_call_latency_seconds_count", (("objective", "throughput"),)): 3,
        ("parrotlet_engine_waiting", engine): 2,
        ("parrotlet_engine_running", engine): 3,
        ("parrotlet_kv_cache_usage_ratio", engine): 0.25,
        ("parrotlet_kv_cache_capacity_tokens", engine): 1600,
        ("parrotlet_prefix_cache_hit_ratio", engine): 0.25,
        ("parrotlet_engine_computed_tokens_total", engine): 1234,
        ("parrotlet_engine_preemptions_total", engine): 1,
        ("parrotlet_engine_steps_total", engine): 77,
    }


def test_render_text_lines() -> None:
    text = render_prometheus(make_stats(engines=[]))

    assert text.endswith("\n")
    assert text.splitlines()[:6] == [
        "# HELP parrotlet_sessions Open sessions.",
        "# TYPE parrotlet_sessions gauge",
        "parrotlet_sessions 4",
        "# HELP parrotlet_client_requests_total Client requests to ServeCore, by kind.",
        "# TYPE parrotlet_client_requests_total counter",
        'parrotlet_client_requests_total{kind="create_session"} 5',
    ]
    assert "# TYPE parrotlet_call_latency_seconds summary" in text
    assert "# TYPE parrotlet_engine_computed_tokens_total counter" in text


def test_label_values_are_escaped() -> None:
    text = render_prometheus(make_stats(client_requests={'we"ird\\kind\n': 1}, engines=[]))

    assert 'parrotlet_client_requests_total{kind="we\\"ird\\\\kind\\n"} 1' in text.splitlines()


def test_two_engines_get_one_series_each() -> None:
    stats = make_stats()
    samples = parse_prometheus(render_prometheus(make_stats(engines=stats.engines * 2)))

    assert samples[("parrotlet_engine_steps_total", (("engine", "1"),))] == 77
    assert samples[("parrotlet_engine_steps_total", (("engine", "0"),))] == 77


@pytest.mark.anyio
@pytest.mark.slow
async def test_metrics_endpoint_counts_client_requests(
    client_a: httpx.AsyncClient, core: ServeCore
) -> None:
    def count(samples: dict[Key, float], kind: str) -> float:
        return samples.get(("parrotlet_client_requests_total", (("kind", kind),)), 0)

    before = parse_prometheus((await client_a.get("/metrics")).text)
    sid = (await client_a.post("/v1/sessions")).json()["session_id"]
    await client_a.post(f"/v1/sessions/{sid}/graph", json={"graph": {}})
    await client_a.delete(f"/v1/sessions/{sid}")
    response = await client_a.get("/metrics")
    after = parse_prometheus(response.text)

    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    for kind in ("create_session", "submit", "delete_session"):
        assert count(after, kind) - count(before, kind) == 1
    assert count(after, "get") == count(before, "get")
    capacity = core.stats().engines[0].capacity_tokens
    assert after[("parrotlet_kv_cache_capacity_tokens", (("engine", "0"),))] == capacity == 23296
    assert after[("parrotlet_sessions", ())] == core.stats().num_sessions
