"""ServeConfig: ServeCore's app-level behaviours, each switchable for like-with-like benchmarks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeConfig:
    """Limits and switches of the serving layer.

    `lazy`: calls run only when a sink that needs them is fetched (else as soon as ready).
    `app_scheduling`: deduce per-call objectives from fetched sinks and pass engine priorities
    (off = FCFS, what request-level serving does).
    `prefix_sharing`: share KV of common prompt prefixes across calls of one tenant.
    `max_request_bytes`: the largest HTTP request body accepted (413 past it).
    """

    lazy: bool = True
    app_scheduling: bool = True
    prefix_sharing: bool = True
    max_graph_calls: int = 4096
    max_variable_chars: int = 1_000_000
    max_sessions: int = 10_000
    default_get_timeout_s: float = 600.0
    max_request_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        for name in ("max_graph_calls", "max_variable_chars", "max_sessions", "max_request_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.default_get_timeout_s <= 0:
            raise ValueError(f"default_get_timeout_s must be > 0, got {self.default_get_timeout_s}")
