"""Structured outputs on the OpenAI routes: a request's `response_format` (OpenAI's json_object
and json_schema) or `structured_outputs` (vLLM's json / regex / choice / grammar) as the Guide
its SamplingParams carry to the engine's guided decoding.
"""

from __future__ import annotations

import json
from typing import Any

from parrotlet.engine.guide import Guide

_FORMATS = ("text", "json_object", "json_schema")
_STRUCTURED = ("json", "regex", "choice", "grammar")


def request_guide(response_format: Any, structured_outputs: Any) -> Guide | None:
    """The Guide of a request's output constraint, None for free text; ValueError names the
    offending field."""
    guide = _response_format(response_format)
    other = _structured_outputs(structured_outputs)
    if guide is not None and other is not None:
        raise ValueError("response_format and structured_outputs both constrain the output")
    return guide or other


def _response_format(value: Any) -> Guide | None:
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in _FORMATS:
        raise ValueError(f"response_format.type must be one of {list(_FORMATS)}, got {kind!r}")
    if kind == "text":
        return None
    if kind == "json_object":
        return Guide.json({"type": "object"})
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), (dict, bool)):
        raise ValueError("response_format.json_schema must be {'name': ..., 'schema': {...}}")
    return Guide.json(spec["schema"])


def _structured_outputs(value: Any) -> Guide | None:
    if value is None:
        return None
    given = sorted(set(value) & set(_STRUCTURED)) if isinstance(value, dict) else []
    if len(given) != 1 or len(value) != 1:
        raise ValueError(f"structured_outputs must have exactly one of {list(_STRUCTURED)}")
    kind, spec = given[0], value[given[0]]
    if kind == "json":
        if isinstance(spec, str):
            return Guide("json_schema", spec)
        if not isinstance(spec, (dict, bool)):
            raise ValueError("structured_outputs.json must be a JSON Schema")
        return Guide.json(spec)
    if kind == "choice":
        if not isinstance(spec, list) or not spec or not all(isinstance(c, str) for c in spec):
            raise ValueError("structured_outputs.choice must be a non-empty list of strings")
        return Guide("grammar", "start: " + " | ".join(json.dumps(c) for c in spec))
    if not isinstance(spec, str):
        raise ValueError(f"structured_outputs.{kind} must be a string")
    return Guide(kind, spec)
