"""Objective deduction and task groups on exact graph shapes (no model)."""

from __future__ import annotations

from parrotlet.graph.index import GraphIndex
from parrotlet.graph.ir import Call, Graph, Input, Output, PerfCriterion, Text, Transform, Variable
from parrotlet.serve.objectives import CallPlan, deduce, engine_priority

LAT, THR = PerfCriterion.LATENCY, PerfCriterion.THROUGHPUT


def make_call(cid: str, inputs: list[str], output: str) -> Call:
    return Call(cid, (Text("x"), *(Input(v) for v in inputs), Output(output)))


def make_index(calls: list[Call], transforms: tuple[Transform, ...] = ()) -> GraphIndex:
    index = GraphIndex()
    index.add(Graph((Variable("doc", "d"),), tuple(calls), transforms))
    return index


def test_chain_is_latency_critical_without_groups():
    index = make_index(
        [make_call("a", ["doc"], "s1"), make_call("b", ["s1"], "s2"), make_call("c", ["s2"], "s3")]
    )
    assert deduce(index, {"s3": LAT}) == {
        "a": CallPlan(LAT),
        "b": CallPlan(LAT),
        "c": CallPlan(LAT),
    }
    assert deduce(index, {"s1": LAT}) == {"a": CallPlan(LAT)}  # only what the sink needs


def test_map_reduce_maps_form_a_task_group():
    maps = [make_call(f"m{i}", ["doc"], f"w{i}") for i in range(3)]
    join = Transform("j", "join", ("w0", "w1", "w2"), "joined")
    index = make_index([*maps, make_call("r", ["joined"], "final")], (join,))
    group = "group:r"
    assert deduce(index, {"final": LAT}) == {
        "m0": CallPlan(LAT, group),
        "m1": CallPlan(LAT, group),
        "m2": CallPlan(LAT, group),
        "j": CallPlan(LAT),
        "r": CallPlan(LAT),
    }
    assert deduce(index, {"final": THR})["m1"] == CallPlan(THR, group)


def test_diamond_groups_the_two_middle_calls_only():
    index = make_index(
        [
            make_call("a", ["doc"], "x"),
            make_call("b", ["x"], "y"),
            make_call("c", ["x"], "z"),
            make_call("d", ["y", "z"], "out"),
        ]
    )
    assert deduce(index, {"out": LAT}) == {
        "a": CallPlan(LAT),
        "b": CallPlan(LAT, "group:d"),
        "c": CallPlan(LAT, "group:d"),
        "d": CallPlan(LAT),
    }


def test_dependent_feeders_are_not_a_group():
    index = make_index(
        [make_call("a", ["doc"], "x"), make_call("b", ["x"], "y"), make_call("c", ["x", "y"], "o")]
    )
    assert deduce(index, {"o": LAT}) == {"a": CallPlan(LAT), "b": CallPlan(LAT), "c": CallPlan(LAT)}


def test_two_sinks_with_different_criteria_latency_wins_on_shared_ancestors():
    index = make_index(
        [
            make_call("shared", ["doc"], "s"),
            make_call("chat", ["s"], "answer"),
            make_call("bulk1", ["s"], "b1"),
            make_call("bulk2", ["b1"], "b2"),
        ]
    )
    assert deduce(index, {"answer": LAT, "b2": THR}) == {
        "shared": CallPlan(LAT),
        "chat": CallPlan(LAT),
        "bulk1": CallPlan(THR),
        "bulk2": CallPlan(THR),
    }
    assert deduce(index, {"b2": THR, "answer": LAT}) == deduce(index, {"answer": LAT, "b2": THR})


def test_engine_priority_orders_classes_then_apps():
    order = [
        engine_priority(CallPlan(LAT), 7),
        engine_priority(CallPlan(LAT), 9),
        engine_priority(CallPlan(LAT, "g"), 1),
        engine_priority(CallPlan(THR), 0),
    ]
    assert order == sorted(order)
