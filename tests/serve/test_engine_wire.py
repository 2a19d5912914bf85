"""The server <-> worker wire format round-trips RequestOutput and EngineStats exactly."""

from __future__ import annotations

import json

import pytest

from parrotlet.engine.logprobs import TokenLogprob
from parrotlet.engine.outputs import EngineStats, RequestOutput
from parrotlet.engine.sequence import FinishReason
from parrotlet.serve.engine_wire import (
    output_from_dict,
    output_to_dict,
    stats_from_dict,
    stats_to_dict,
    stream_error,
)


def test_request_output_round_trips() -> None:
    out = RequestOutput("req-3", (5, 6), " hi", (4, 5, 6), "a hi", True, FinishReason.LENGTH, 7, 2)
    wire = output_to_dict(out)
    assert wire["finish_reason"] == "length" and wire["token_ids"] == [4, 5, 6]
    assert output_from_dict(wire) == out
    unfinished = RequestOutput("r", (), "", (), "", False, None, 1, 0, error=None)
    assert output_from_dict(output_to_dict(unfinished)) == unfinished
    logprob = TokenLogprob(6, -0.25, ((6, -0.25), (9, -1.5)))
    with_logprobs = RequestOutput("r", (6,), "x", (6,), "x", False, None, 1, 0,
                                  new_logprobs=(logprob,))  # fmt: skip
    wire = output_to_dict(with_logprobs)
    assert wire["new_logprobs"] == [[6, -0.25, [[6, -0.25], [9, -1.5]]]]
    assert output_from_dict(json.loads(json.dumps(wire))) == with_logprobs


def test_stats_round_trip_and_name_a_missing_field() -> None:
    stats = EngineStats(1, 2, 100, 10, 16, 500, 400, 300, 0, 42)
    assert stats_from_dict(stats_to_dict(stats)) == stats
    broken = stats_to_dict(stats)
    del broken["num_steps"]
    with pytest.raises(ValueError, match="engine stats lack 'num_steps'"):
        stats_from_dict(broken)


def test_stream_error_marks_bad_requests() -> None:
    assert stream_error(ValueError("too long")) == {"stream_error": "too long", "invalid": True}
    assert stream_error(RuntimeError()) == {"stream_error": "RuntimeError", "invalid": False}
