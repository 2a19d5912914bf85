"""What ServeCore hands back: fetched variables, completion chunks and stats (no torch).

The HTTP app serializes these and the client rebuilds VariableResult from JSON, so both sides
share one definition.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from parrotlet.engine.logprobs import TokenLogprob
from parrotlet.engine.outputs import EngineStats


@dataclass(frozen=True)
class VariableResult:
    """The value of a fetched Semantic Variable, with how it was produced.

    `finish_reason` is None for values set by the client or by a transform; the token counts are
    those of the call that generated it (0 otherwise); `logprobs` those of its tokens when its
    output asked for them (`Output(logprobs=k)`).
    """

    name: str
    value: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (`from_dict`'s input): logprobs as TokenLogprob.to_list, left out when
        there are none (the form of an ordinary value is unchanged)."""
        data = dataclasses.asdict(self)
        del data["logprobs"]
        if self.logprobs:
            data["logprobs"] = [logprob.to_list() for logprob in self.logprobs]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VariableResult:
        return cls(
            name=data["name"],
            value=data["value"],
            finish_reason=data.get("finish_reason"),
            prompt_tokens=int(data.get("prompt_tokens", 0)),
            completion_tokens=int(data.get("completion_tokens", 0)),
            logprobs=tuple(TokenLogprob.from_list(x) for x in data.get("logprobs", ())),
        )


@dataclass(frozen=True)
class CompletionChunk:
    """A piece of a one-call completion; the last one carries `finish_reason` and `token_ids`,
    the ids to splice into a follow-up prompt (empty where they do not spell the text exactly).
    `logprobs`: those of the tokens generated since the previous chunk (when asked for)."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class ServeStats:
    """Counters for /metrics and for tests that count client round trips."""

    num_sessions: int
    client_requests: dict[str, int]
    calls_started: int
    calls_finished: int
    calls_started_by_server: int
    call_latency: dict[str, tuple[int, float]]  # objective -> (count, total seconds)
    engines: list[EngineStats]
    calls_requeued: int = 0  # outputs restarted on another engine after theirs died
