"""Guide: validation at the boundary and its trip through SamplingParams' wire form."""

from __future__ import annotations

from typing import Any

import pytest

from parrotlet.engine.guide import MAX_GUIDE_CHARS, Guide
from parrotlet.engine.sampling_params import SamplingParams


def test_a_guide_travels_in_sampling_params() -> None:
    params = SamplingParams(max_tokens=5, guide=Guide.json({"type": "object"}))

    wire = params.to_dict()

    assert wire["guide"] == {"kind": "json_schema", "spec": '{"type": "object"}'}
    assert SamplingParams.from_dict(wire) == params
    assert SamplingParams.from_dict({"max_tokens": 5}).guide is None
    assert hash(params) == hash(SamplingParams.from_dict(wire))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Guide("xml", "<a/>"), "guide kind must be one of ['json_schema', 'regex', "
         "'grammar'], got 'xml'"),
        (lambda: Guide("regex", ""), "a regex guide's spec must be a non-empty string"),
        (lambda: Guide("regex", "a" * (MAX_GUIDE_CHARS + 1)),
         f"a guide's spec has at most {MAX_GUIDE_CHARS} chars, got {MAX_GUIDE_CHARS + 1}"),
        (lambda: Guide("json_schema", "{oops"), "a json_schema guide's spec is not JSON: "
         "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        (lambda: Guide("json_schema", "[1]"),
         "a json_schema guide's spec must be a JSON object or boolean"),
        (lambda: Guide("grammar", "start: foo"), 'the grammar guide does not compile: at 1(8): '
         'unknown name: "foo"\n   1 | start: foo\n              ^\n'),
        (lambda: SamplingParams(guide={"kind": "regex"}),
         "guide must be a Guide or {'kind', 'spec'}, got {'kind': 'regex'}"),
    ],
)  # fmt: skip
def test_bad_guides_are_rejected_naming_what_is_wrong(make: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value) == message
