"""Prometheus text exposition of ServeStats, served at GET /metrics.

Counters end in `_total`; per-engine series carry an `engine` label, latency an `objective` label.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from parrotlet.engine.outputs import EngineStats
    from parrotlet.serve.results import ServeStats

Labels = Sequence[tuple[str, str]]

# name, type, help, value of one engine
_ENGINE_METRICS: tuple[tuple[str, str, str, Callable[[EngineStats], float]], ...] = (
    ("parrotlet_engine_waiting", "gauge", "Sequences waiting to be scheduled.",
     lambda e: e.num_waiting),
    ("parrotlet_engine_running", "gauge", "Sequences running (in the batch).",
     lambda e: e.num_running),
    ("parrotlet_kv_cache_usage_ratio", "gauge", "Fraction of KV cache blocks in use.",
     lambda e: e.kv_usage),
    ("parrotlet_kv_cache_capacity_tokens", "gauge", "Tokens the KV cache can hold.",
     lambda e: e.capacity_tokens),
    ("parrotlet_prefix_cache_hit_ratio", "gauge",
     "Fraction of admitted prompt tokens found in the prefix cache.",
     lambda e: e.prefix_hit_rate),
    ("parrotlet_engine_computed_tokens_total", "counter",
     "Tokens run through the model (prompt chunks and decodes).",
     lambda e: e.num_computed_tokens),
    ("parrotlet_engine_preemptions_total", "counter", "Sequences preempted for KV space.",
     lambda e: e.num_preemptions),
    ("parrotlet_engine_steps_total", "counter", "Engine steps run.", lambda e: e.num_steps),
)  # fmt: skip


def render_prometheus(stats: ServeStats) -> str:
    """The text exposition format (version 0.0.4) of `stats`, one HELP and TYPE per family."""
    lines: list[str] = []
    _family(lines, "parrotlet_sessions", "gauge", "Open sessions.", [((), stats.num_sessions)])
    _family(
        lines,
        "parrotlet_client_requests_total",
        "counter",
        "Client requests to ServeCore, by kind.",
        [((("kind", kind),), n) for kind, n in sorted(stats.client_requests.items())],
    )
    for name, help_text, value in (
        ("calls_started", "Calls started.", stats.calls_started),
        ("calls_finished", "Calls finished.", stats.calls_finished),
        ("calls_started_by_server", "Calls started inside the server when their inputs were "
         "produced (no client request).", stats.calls_started_by_server),
        ("calls_requeued", "Call outputs re-run on another engine after theirs died.",
         stats.calls_requeued),
    ):  # fmt: skip
        _family(lines, f"parrotlet_{name}_total", "counter", help_text, [((), value)])
    _latency(lines, stats.call_latency)
    for name, kind, help_text, value_of in _ENGINE_METRICS:
        samples = [((("engine", str(i)),), value_of(e)) for i, e in enumerate(stats.engines)]
        _family(lines, name, kind, help_text, samples)
    return "\n".join(lines) + "\n"


def _latency(lines: list[str], latency: dict[str, tuple[int, float]]) -> None:
    name = "parrotlet_call_latency_seconds"
    lines.append(f"# HELP {name} End-to-end latency of finished calls, by objective.")
    lines.append(f"# TYPE {name} summary")
    for objective, (count, seconds) in sorted(latency.items()):
        labels = (("objective", objective),)
        lines.append(_sample(f"{name}_sum", labels, seconds))
        lines.append(_sample(f"{name}_count", labels, count))


def _family(
    lines: list[str], name: str, kind: str, help_text: str, samples: list[tuple[Labels, float]]
) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")
    lines.extend(_sample(name, labels, value) for labels, value in samples)


def _sample(name: str, labels: Labels, value: float) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return f"{name}{{{inner}}} {_number(value)}" if inner else f"{name} {_number(value)}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
