"""Semantic Variables offline: declarations, transforms' wire form, map -> join -> reduce."""

from __future__ import annotations

import pytest

import parrotlet as P
from parrotlet.api.session import Session

from .test_function import GREEDY_8


def make_summarize() -> P.SemanticFunction:
    @P.semantic_function(temperature=0, max_tokens=8)
    def summarize(chunk, summary):
        """Summarize: {{input:chunk}}
        Summary: {{output:summary}}"""

    return summarize


def make_combine() -> P.SemanticFunction:
    @P.semantic_function(temperature=0, max_tokens=8)
    def combine(notes, final):
        """Notes:
        {{input:notes}}
        One line: {{output:final}}"""

    return combine


def test_transforms_wire_form() -> None:
    with Session() as session:
        doc = P.variable("doc", '{"a": {"b": [" x ", "y"]}}')
        doc.json_field("a.b.0").strip()
        doc.slice(2, None)
        doc.split(",", -1)
        doc.regex(r"(?P<k>\w+)", "k")
        P.format("{0}: {who}", doc, who="me")
        graph = session.take_pending()
    assert graph.to_dict() == {
        "variables": [
            {"name": "doc", "value": '{"a": {"b": [" x ", "y"]}}'},
            {"name": "format-1.1", "value": "me"},
        ],
        "calls": [],
        "transforms": [
            {
                "id": "json_field-1",
                "op": "json_field",
                "inputs": ["doc"],
                "output": "json_field-1",
                "args": {"path": "a.b.0"},
            },
            {
                "id": "strip-1",
                "op": "strip",
                "inputs": ["json_field-1"],
                "output": "strip-1",
                "args": {},
            },
            {
                "id": "slice-1",
                "op": "slice",
                "inputs": ["doc"],
                "output": "slice-1",
                "args": {"start": 2, "stop": None},
            },
            {
                "id": "split-1",
                "op": "split",
                "inputs": ["doc"],
                "output": "split-1",
                "args": {"sep": ",", "index": -1},
            },
            {
                "id": "regex-1",
                "op": "regex",
                "inputs": ["doc"],
                "output": "regex-1",
                "args": {"pattern": r"(?P<k>\w+)", "group": "k"},
            },
            {
                "id": "format-1",
                "op": "format",
                "inputs": ["doc", "format-1.1"],
                "output": "format-1",
                "args": {"template": "{0}: {who}", "names": ["0", "who"]},
            },
        ],
    }


def test_map_join_reduce_is_one_increment() -> None:
    summarize, combine = make_summarize(), make_combine()
    with Session() as session:
        summaries = [summarize(chunk) for chunk in ("one", "two")]
        final = combine(P.join(summaries, sep="\n- "))
        assert final.name == "combine-1.final"
        graph = session.take_pending()
    map_calls = [
        {
            "id": f"summarize-{i}",
            "chat": True,
            "segments": [
                {"text": "Summarize: "},
                {"input": f"summarize-{i}.chunk"},
                {"text": "\nSummary: "},
                {"output": f"summarize-{i}.summary", "sampling": GREEDY_8},
            ],
        }
        for i in (1, 2)
    ]
    reduce_call = {
        "id": "combine-1",
        "chat": True,
        "segments": [
            {"text": "Notes:\n"},
            {"input": "join-1"},
            {"text": "\nOne line: "},
            {"output": "combine-1.final", "sampling": GREEDY_8},
        ],
    }
    assert graph.to_dict() == {
        "variables": [
            {"name": "summarize-1.chunk", "value": "one"},
            {"name": "summarize-2.chunk", "value": "two"},
        ],
        "calls": [*map_calls, reduce_call],
        "transforms": [
            {
                "id": "join-1",
                "op": "join",
                "inputs": ["summarize-1.summary", "summarize-2.summary"],
                "output": "join-1",
                "args": {"sep": "\n- "},
            }
        ],
    }


def test_declared_variable_set_while_pending_needs_no_request() -> None:
    with Session() as session:
        topic = P.variable()
        named = P.variable("question")
        topic.set("birds")
        assert (topic.name, named.name) == ("var-1", "question")
        graph = session.take_pending()
    assert graph.to_dict()["variables"] == [
        {"name": "var-1", "value": "birds"},
        {"name": "question"},
    ]


def test_variable_name_errors() -> None:
    with Session():
        P.variable("q")
        with pytest.raises(ValueError, match="variable name 'q' is already used"):
            P.variable("q")
        with pytest.raises(ValueError, match=r"variable name 'a\.b' must be letters"):
            P.variable("a.b")
        with pytest.raises(ValueError, match="variable name 'a/b' must be letters"):
            P.variable("a/b")
        constant = P.variable("s", "x")
        with pytest.raises(ValueError, match="variable 's' already has a value"):
            constant.set("y")


def test_transform_argument_errors() -> None:
    with Session():
        v = P.variable("v", "text")
        with pytest.raises(ValueError, match="format field \\{2\\} has no positional value"):
            P.format("{0}{2}", v, v)
        with pytest.raises(ValueError, match="format field \\{who\\} has no keyword value"):
            P.format("{who}", v)
        with pytest.raises(ValueError, match="regex pattern '\\(' is invalid"):
            v.regex("(")
        with pytest.raises(ValueError, match="regex group 2 out of range"):
            v.regex("(a)", 2)
        with pytest.raises(ValueError, match="split sep must be a non-empty str or None"):
            v.split("")
        with pytest.raises(TypeError, match="join input 1 must be a SemanticVariable or str"):
            P.join([v, 3])
        with pytest.raises(ValueError, match="join needs at least one value"):
            P.join([])


def test_fetching_from_an_offline_session_is_an_error() -> None:
    with Session():
        v = P.variable("v", "x")
        with pytest.raises(RuntimeError, match="offline"):
            v.get()
