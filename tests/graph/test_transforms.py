"""Server-side transforms: exact outputs, submit-time argument checks, and the limits that keep
one tenant's graph from stalling or exhausting the server."""

from __future__ import annotations

import re
import time

import pytest

from parrotlet.graph import transforms
from parrotlet.graph.ir import GraphError, Transform
from parrotlet.graph.transforms import apply_transform, check_transform_args

LIMIT = 1_000_000  # a session's max_value_chars by default


def make_transform(op: str, args: dict, n_inputs: int = 1) -> Transform:
    return Transform("t", op, tuple(f"v{i}" for i in range(n_inputs)), "out", args)


@pytest.mark.parametrize(
    ("op", "args", "values", "expected"),
    [
        ("join", {"sep": " | "}, ["a", "b", "c"], "a | b | c"),
        ("join", {}, ["a", "b"], "a\nb"),
        ("format", {"template": "{0} and {1}"}, ["x", "y"], "x and y"),
        ("format", {"template": "Q: {q}", "names": ["q"]}, ["why?"], "Q: why?"),
        ("format", {"template": "{{{}}} {}"}, ["a", "b"], "{a} b"),
        ("slice", {"start": 2, "stop": 5}, ["abcdefg"], "cde"),
        ("split", {"sep": ",", "index": 1}, ["a,b,c"], "b"),
        ("split", {"sep": ",", "index": 7}, ["a,b"], ""),
        ("json_field", {"path": "a.b.1"}, ['{"a": {"b": ["x", "y"]}}'], "y"),
        ("json_field", {"path": "a"}, ['{"a": {"k": 1}}'], '{"k": 1}'),
        ("regex", {"pattern": r"Answer: (\w+)", "group": 1}, ["So. Answer: Paris."], "Paris"),
        ("regex", {"pattern": r"\d+"}, ["no digits"], ""),
        ("strip", {}, ["  hi \n"], "hi"),
    ],
)
def test_transform_outputs(op, args, values, expected):
    t = make_transform(op, args, len(values))
    check_transform_args(t)
    assert apply_transform(t, values, LIMIT) == expected


@pytest.mark.parametrize(
    ("t", "message"),
    [
        (make_transform("join", {"separator": ","}), r"unknown args \['separator'\]"),
        (make_transform("slice", {"start": "1"}), "arg 'start' has the wrong type"),
        (make_transform("strip", {}, 2), "takes exactly one input"),
        (make_transform("format", {}), "needs a string arg 'template'"),
        (make_transform("regex", {"pattern": "("}), "bad pattern"),
        (make_transform("format", {"template": "{0"}), "malformed template"),
    ]
    + [
        (make_transform("format", {"template": f"x {{{field}}}"}),
         re.escape(f"field {{{field}}} must be a plain {{}}, {{0}} or {{name}} (no attribute or "
                   "item access, conversion or format spec)"))
        for field in ("0:>999999999", "0!r", "0.__class__", "0[0]", "q:{w}")
    ],
)  # fmt: skip
def test_bad_transform_args_are_rejected(t, message):
    with pytest.raises(GraphError, match=message):
        check_transform_args(t)


@pytest.mark.parametrize("value", ["not json", "[" * 100_000 + "]" * 100_000])
def test_a_failing_transform_names_itself(value):
    t = make_transform("json_field", {"path": "a"})
    with pytest.raises(GraphError, match=r"transform 't' \(json_field\) failed"):
        apply_transform(t, [value], LIMIT)


@pytest.mark.parametrize(
    ("op", "args", "values", "chars"),
    [
        ("join", {"sep": "--"}, ["a" * 400, "b" * 400, "c" * 300], 1104),
        ("format", {"template": "{0}{0}{0} {x}", "names": ["0", "x"]}, ["a" * 300, "b" * 200],
         1101),
        ("format", {"template": "{}{{}}{}"}, ["a" * 600, "b" * 500], 1102),
    ],
)  # fmt: skip
def test_outputs_past_the_limit_fail_naming_their_size(op, args, values, chars):
    t = make_transform(op, args, len(values))
    check_transform_args(t)

    assert len(apply_transform(t, values, chars)) == chars  # the size computed is exact
    with pytest.raises(GraphError) as failed:
        apply_transform(t, values, chars - 1)

    assert str(failed.value) == (
        f"transform 't' ({op}) would output {chars} chars, the limit is {chars - 1}"
    )


def test_an_output_that_grows_past_the_limit_fails_too():
    t = make_transform("json_field", {"path": "a"})  # ASCII escapes: 6 chars per letter
    assert apply_transform(t, ['{"a": {"k": "ééé"}}'], 27) == '{"k": "\\u00e9\\u00e9\\u00e9"}'

    with pytest.raises(GraphError, match=r"would output 27 chars, the limit is 26"):
        apply_transform(t, ['{"a": {"k": "ééé"}}'], 26)


def test_a_regex_that_backtracks_without_end_gives_up(monkeypatch):
    monkeypatch.setattr(transforms, "REGEX_TIMEOUT_S", 0.2)
    t = make_transform("regex", {"pattern": "(a|aa)+$"})
    started = time.perf_counter()

    with pytest.raises(GraphError) as failed:
        apply_transform(t, ["a" * 60 + "b"], LIMIT)

    assert 0.2 <= time.perf_counter() - started < 5  # not the years 60 letters would take
    assert str(failed.value) == (
        "transform 't' (regex) gave up after 0.2 s: the pattern backtracks without end on this "
        "input"
    )
    assert apply_transform(t, ["a" * 60], LIMIT) == "a" * 60
