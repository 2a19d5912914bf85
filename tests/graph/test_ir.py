"""The Graph wire format: exact round trip and malformed input named field by field."""

from __future__ import annotations

import pytest

from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.graph.ir import Call, Graph, GraphError, Input, Output, Text, Transform, Variable


def test_round_trip_is_exact():
    graph = Graph(
        (Variable("doc", "hello"), Variable("s")),
        (
            Call(
                "c1",
                (Text("Sum: "), Input("doc"), Output("s", SamplingParams(max_tokens=5))),
                chat=False,
            ),
        ),
        (Transform("t1", "join", ("s", "doc"), "j", {"sep": "-"}),),
    )
    data = graph.to_dict()
    assert data["calls"][0]["segments"][:2] == [{"text": "Sum: "}, {"input": "doc"}]
    assert data["calls"][0]["segments"][2]["sampling"]["max_tokens"] == 5
    assert Graph.from_dict(data) == graph


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "graph must be a JSON object"),
        ({"calls": {}}, "graph.calls must be a list"),
        ({"nodes": []}, r"unknown fields \['nodes'\]"),
        ({"variables": [{"value": "x"}]}, "variables\\[0\\].name must be a non-empty string"),
        ({"calls": [{"id": "a", "segments": [{"bogus": 1}]}]}, r"unknown fields \['bogus'\]"),
        (
            {"calls": [{"id": "a", "segments": [{"output": "o", "sampling": {"top_p": 2}}]}]},
            r"calls\[0\].segments\[0\].sampling: top_p must be in \(0, 1\]",
        ),
        (
            {"transforms": [{"id": "t", "op": "eval", "inputs": ["a"], "output": "b"}]},
            "'eval' is not one of",
        ),
        (
            {
                "calls": [
                    {
                        "id": "a",
                        "segments": [
                            {"output": "o", "sampling": {"guide": {"kind": "regex", "spec": "(ab"}}}
                        ],
                    }
                ]
            },
            r"(?s)calls\[0\].segments\[0\].sampling: the regex guide does not compile: .*"
            "unclosed group",
        ),
    ],
)
def test_malformed_graphs_name_the_field(data, message):
    with pytest.raises(GraphError, match=message):
        Graph.from_dict(data)
