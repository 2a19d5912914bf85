"""GraphIndex validation: every bad graph is rejected with the offending call / variable named."""

from __future__ import annotations

import pytest

from parrotlet.graph.index import CLIENT, GraphIndex
from parrotlet.graph.ir import Call, Graph, GraphError, Input, Output, Text, Transform, Variable


def make_call(cid: str, inputs: list[str], output: str) -> Call:
    segments = [Text("x")] + [Input(v) for v in inputs] + [Output(output)]
    return Call(cid, tuple(segments))


def test_chain_is_accepted_and_indexed():
    index = GraphIndex()
    index.add(
        Graph(
            (Variable("doc", "text"),),
            (make_call("a", ["doc"], "s1"), make_call("b", ["s1"], "s2")),
        )
    )
    assert index.producers == {"doc": CLIENT, "s1": "a", "s2": "b"}
    assert index.consumers == {"doc": ["a"], "s1": ["b"]}


def test_a_later_increment_may_reference_earlier_variables():
    index = GraphIndex()
    index.add(Graph((Variable("doc", "t"),), (make_call("a", ["doc"], "s1"),)))
    index.add(Graph((), (make_call("b", ["s1", "doc"], "s2"),)))
    assert index.consumers["doc"] == ["a", "b"]


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        (Graph((), (make_call("a", ["nope"], "s"),)), "'a' references unknown variable 'nope'"),
        (
            Graph((), (make_call("a", ["s2"], "s1"), make_call("b", ["s1"], "s2"))),
            "cycle: 'a' depends on its own output via 's1'",
        ),
        (
            Graph((Variable("d", "t"),), (make_call("a", ["d"], "s"), make_call("b", ["d"], "s"))),
            "variable 's' has two producers: 'a' and 'b'",
        ),
        (
            Graph((Variable("d", "t"),), (make_call("a", ["d"], "d2"), make_call("a", ["d"], "e"))),
            "call id 'a' is used twice",
        ),
        (
            Graph((Variable("d", "t"),), (make_call("a", [], "d"),)),
            "variable 'd' has two producers: '<client>' and 'a'",
        ),
        (Graph((), (make_call("a", ["s"], "s"),)), "call 'a' reads a variable it produces"),
        (Graph((Variable("d", "t"), Variable("d"))), "variable 'd' is already declared"),
        (Graph((), (Call("a", (Text("hi"),)),)), "call 'a' has no output"),
        (
            Graph((), (), (Transform("t", "join", ("x",), "y"),)),
            "'t' references unknown variable 'x'",
        ),
    ],
)
def test_bad_graphs_are_rejected_naming_the_problem(graph, message):
    index = GraphIndex()
    with pytest.raises(GraphError, match=message.replace("(", r"\(")):
        index.add(graph)
    assert index.nodes == {} and index.producers == {}  # nothing half-committed


def test_cycle_through_a_transform_and_an_earlier_increment():
    index = GraphIndex()
    index.add(Graph((Variable("x"),), (make_call("a", ["x"], "y"),)))
    with pytest.raises(GraphError, match="cycle: 't' depends on its own output via 'x'"):
        index.add(Graph((), (), (Transform("t", "strip", ("y",), "x"),)))
    index2 = GraphIndex()
    index2.add(Graph((Variable("x"),)))
    with pytest.raises(GraphError, match="cycle"):
        index2.add(
            Graph(
                (),
                (make_call("a", ["z"], "y"),),
                (Transform("t", "strip", ("y",), "z"),),
            )
        )


def test_size_limits():
    index = GraphIndex(max_nodes=2, max_value_chars=5)
    with pytest.raises(GraphError, match="the limit is 5"):
        index.add(Graph((Variable("d", "123456"),)))
    calls = tuple(make_call(f"c{i}", [], f"o{i}") for i in range(3))
    with pytest.raises(GraphError, match="3 calls and transforms, the limit is 2"):
        index.add(Graph((), calls))


def test_claim_for_client_only_for_declared_unset_variables():
    index = GraphIndex()
    index.add(Graph((Variable("q"), Variable("d", "t")), (make_call("a", ["q"], "s"),)))
    index.claim_for_client("q")
    assert index.producers["q"] == CLIENT
    with pytest.raises(GraphError, match="'q' is already set"):
        index.claim_for_client("q")
    with pytest.raises(GraphError, match="'s' is produced by 'a'"):
        index.claim_for_client("s")
    with pytest.raises(KeyError):
        index.claim_for_client("unknown")
