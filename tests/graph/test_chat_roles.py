"""Role segments: a chat call's prompt as several messages — wire format, `Call.messages`, and
validation naming the call."""

from __future__ import annotations

import pytest

from parrotlet.graph.index import GraphIndex
from parrotlet.graph.ir import Call, Graph, GraphError, Input, Output, Role, Text, Variable

SYSTEM_USER = Call(
    "c",
    (Role("system"), Text("Be brief."), Role("user"), Text("Q: "), Input("q"), Output("a")),
)


def test_round_trip_keeps_roles():
    graph = Graph((Variable("q", "why?"),), (SYSTEM_USER,))
    data = graph.to_dict()
    assert data["calls"][0]["segments"][:3] == [
        {"role": "system"},
        {"text": "Be brief."},
        {"role": "user"},
    ]
    assert Graph.from_dict(data) == graph


def test_messages_group_content_by_role():
    assert SYSTEM_USER.messages == (
        ("system", (Text("Be brief."),)),
        ("user", (Text("Q: "), Input("q"))),
    )
    assert SYSTEM_USER.inputs == ("q",) and SYSTEM_USER.outputs == ("a",)
    plain = Call("p", (Text("Hi "), Input("q"), Output("a"), Text(" more")))
    assert plain.messages == (("user", (Text("Hi "), Input("q"))),)


@pytest.mark.parametrize(
    ("segment", "message"),
    [
        ({"role": "tool"}, r"calls\[0\].segments\[0\]: a role segment is"),
        ({"role": 3}, r"calls\[0\].segments\[0\]: a role segment is"),
    ],
)
def test_malformed_role_segments_name_the_field(segment, message):
    data = {"calls": [{"id": "c", "segments": [segment, {"output": "o"}]}]}
    with pytest.raises(GraphError, match=message):
        Graph.from_dict(data)


@pytest.mark.parametrize(
    ("segments", "chat", "message"),
    [
        ((Role("user"), Text("x"), Output("o")), False, "call 'c' has role segments but is not"),
        ((Text("x"), Role("user"), Text("y"), Output("o")), True, "the first segment must be"),
        ((Role("user"), Text("x"), Output("o"), Role("user")), True, "follows the first output"),
        ((Role("system"), Role("user"), Text("x"), Output("o")), True, "'system' message at"),
        ((Role("user"), Output("o")), True, "call 'c': the 'user' message at segment 0 is empty"),
        ((Role("robot"), Text("x"), Output("o")), True, "role 'robot' is not one of"),
    ],
)
def test_bad_role_segments_are_rejected_naming_the_call(segments, chat, message):
    index = GraphIndex()
    with pytest.raises(GraphError, match=message):
        index.add(Graph((), (Call("c", segments, chat),)))
    assert index.nodes == {}
