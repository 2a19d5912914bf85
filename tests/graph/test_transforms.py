"""Server-side transforms: exact outputs and submit-time argument checks."""

from __future__ import annotations

import pytest

from parrotlet.graph.ir import GraphError, Transform
from parrotlet.graph.transforms import apply_transform, check_transform_args


def make_transform(op: str, args: dict, n_inputs: int = 1) -> Transform:
    return Transform("t", op, tuple(f"v{i}" for i in range(n_inputs)), "out", args)


@pytest.mark.parametrize(
    ("op", "args", "values", "expected"),
    [
        ("join", {"sep": " | "}, ["a", "b", "c"], "a | b | c"),
        ("join", {}, ["a", "b"], "a\nb"),
        ("format", {"template": "{0} and {1}"}, ["x", "y"], "x and y"),
        ("format", {"template": "Q: {q}", "names": ["q"]}, ["why?"], "Q: why?"),
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
    assert apply_transform(t, values) == expected


@pytest.mark.parametrize(
    ("t", "message"),
    [
        (make_transform("join", {"separator": ","}), r"unknown args \['separator'\]"),
        (make_transform("slice", {"start": "1"}), "arg 'start' has the wrong type"),
        (make_transform("strip", {}, 2), "takes exactly one input"),
        (make_transform("format", {}), "needs a string arg 'template'"),
        (make_transform("regex", {"pattern": "("}), "bad pattern"),
    ],
)
def test_bad_transform_args_are_rejected(t, message):
    with pytest.raises(GraphError, match=message):
        check_transform_args(t)


def test_a_failing_transform_names_itself():
    t = make_transform("json_field", {"path": "a"})
    with pytest.raises(GraphError, match=r"transform 't' \(json_field\) failed"):
        apply_transform(t, ["not json"])
