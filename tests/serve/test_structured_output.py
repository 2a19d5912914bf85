"""The OpenAI routes' output constraints as Guides (serve/structured_output.py), no model."""

from __future__ import annotations

from typing import Any

import pytest

from parrotlet.engine.guide import Guide
from parrotlet.serve.structured_output import request_guide

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}


@pytest.mark.parametrize(
    ("response_format", "structured", "expected"),
    [
        (None, None, None),
        ({"type": "text"}, None, None),
        ({"type": "json_object"}, None, Guide.json({"type": "object"})),
        ({"type": "json_schema", "json_schema": {"name": "c", "schema": SCHEMA}}, None,
         Guide.json(SCHEMA)),
        (None, {"json": SCHEMA}, Guide.json(SCHEMA)),
        (None, {"json": '{"type": "string"}'}, Guide("json_schema", '{"type": "string"}')),
        (None, {"regex": "[0-9]+"}, Guide("regex", "[0-9]+")),
        (None, {"choice": ["yes", 'say "no"']}, Guide("grammar", 'start: "yes" | "say \\"no\\""')),
        (None, {"grammar": 'start: "a"'}, Guide("grammar", 'start: "a"')),
    ],
)  # fmt: skip
def test_output_constraints_as_guides(response_format: Any, structured: Any, expected) -> None:
    assert request_guide(response_format, structured) == expected


@pytest.mark.parametrize(
    ("response_format", "structured", "message"),
    [
        ({"type": "xml"}, None, "response_format.type must be one of ['text', 'json_object', "
         "'json_schema'], got 'xml'"),
        ("json", None, "response_format.type must be one of ['text', 'json_object', "
         "'json_schema'], got None"),
        ({"type": "json_schema", "json_schema": {"name": "c"}}, None,
         "response_format.json_schema must be {'name': ..., 'schema': {...}}"),
        (None, {"regex": "a", "choice": ["a"]},
         "structured_outputs must have exactly one of ['json', 'regex', 'choice', 'grammar']"),
        (None, {"choice": []}, "structured_outputs.choice must be a non-empty list of strings"),
        (None, {"regex": 3}, "structured_outputs.regex must be a string"),
        (None, {"json": [1]}, "structured_outputs.json must be a JSON Schema"),
        ({"type": "json_object"}, {"regex": "a"},
         "response_format and structured_outputs both constrain the output"),
    ],
)  # fmt: skip
def test_bad_constraints_name_the_field(response_format: Any, structured: Any, message: str):
    with pytest.raises(ValueError) as info:
        request_guide(response_format, structured)
    assert str(info.value) == message
