"""The server <-> engine-worker wire format: request bodies, RequestOutput and EngineStats as JSON.

RemoteEngine (server side) and the engine worker (engine/worker.py) both use these, so the two
ends cannot drift. No torch: the server may run without an engine.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from parrotlet.engine.logprobs import TokenLogprob
from parrotlet.engine.outputs import EngineStats, RequestOutput
from parrotlet.engine.sequence import FinishReason

_STRICT = ConfigDict(extra="forbid", strict=True)


class GenerateBody(BaseModel):
    """POST /generate: one request; the response streams one output per JSON line."""

    model_config = _STRICT
    prompt: list[int] = Field(min_length=1)
    sampling: dict[str, Any]
    priority: int = 0
    cache_namespace: str = ""
    group: str | None = None


class PrefixBody(BaseModel):
    """POST /pin (streams keep-alive lines, then `{"pin_id": ...}`) and POST /cached_prefix_len."""

    model_config = _STRICT
    prompt: list[int] = Field(min_length=1)
    cache_namespace: str = ""


class UnpinBody(BaseModel):
    model_config = _STRICT
    pin_id: str


class RegisterBody(BaseModel):
    """POST /v1/engines/register: a worker announces itself (and again after a 404 heartbeat).

    `token` is the bearer token the server must send to the worker's own API.
    """

    model_config = _STRICT
    name: str = Field(min_length=1, max_length=200)
    url: str = Field(min_length=1, max_length=2000)
    model: str
    max_model_len: int = Field(ge=1)
    block_size: int = Field(ge=1)
    token: str = ""


class HeartbeatBody(BaseModel):
    """POST /v1/engines/heartbeat: the worker's EngineStats, every ~0.5 s."""

    model_config = _STRICT
    name: str
    stats: dict[str, int]


def output_to_dict(out: RequestOutput) -> dict[str, Any]:
    d = dataclasses.asdict(out)
    d["finish_reason"] = out.finish_reason.value if out.finish_reason else None
    d["new_token_ids"], d["token_ids"] = list(out.new_token_ids), list(out.token_ids)
    d["new_logprobs"] = [logprob.to_list() for logprob in out.new_logprobs]
    return d


def output_from_dict(d: dict[str, Any]) -> RequestOutput:
    reason = d.get("finish_reason")
    return RequestOutput(
        request_id=d["request_id"],
        new_token_ids=tuple(d["new_token_ids"]),
        text_delta=d["text_delta"],
        token_ids=tuple(d["token_ids"]),
        text=d["text"],
        finished=d["finished"],
        finish_reason=FinishReason(reason) if reason is not None else None,
        num_prompt_tokens=d["num_prompt_tokens"],
        num_cached_tokens=d["num_cached_tokens"],
        error=d.get("error"),
        new_logprobs=tuple(TokenLogprob.from_list(x) for x in d.get("new_logprobs", ())),
    )


def stats_to_dict(stats: EngineStats) -> dict[str, int]:
    return dataclasses.asdict(stats)


def stats_from_dict(d: dict[str, int]) -> EngineStats:
    """ValueError naming the first missing field."""
    names = [f.name for f in dataclasses.fields(EngineStats)]
    missing = [n for n in names if n not in d]
    if missing:
        raise ValueError(f"engine stats lack {missing[0]!r}")
    return EngineStats(**{n: int(d[n]) for n in names})


def empty_stats(block_size: int) -> EngineStats:
    """Stats of an engine not heard from yet (one block, so kv_usage stays defined)."""
    return EngineStats(0, 0, 1, 0, block_size, 0, 0, 0, 0, 0)


def stream_error(exc: Exception) -> dict[str, Any]:
    """The last line of a /generate stream that failed: `invalid` for a bad request (a
    ValueError, which re-running elsewhere would not fix), else an engine failure."""
    return {"stream_error": str(exc) or type(exc).__name__, "invalid": isinstance(exc, ValueError)}
