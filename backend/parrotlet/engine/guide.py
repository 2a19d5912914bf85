"""Guide: a constraint on a call's output text (structured outputs), carried in SamplingParams
from the app or the OpenAI routes to the engine, where guided_decoding.py masks the logits of
every step so that the text can only match it. Must not import torch (SamplingParams's rule;
llguidance, which checks and compiles guides, does not).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

GUIDE_KINDS = ("json_schema", "regex", "grammar")
MAX_GUIDE_CHARS = 1 << 16  # a guide compiles on the engine's step loop: keep it bounded
_COMPACT_JSON = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class Guide:
    """What a call's output must match: a JSON Schema (`json_schema`, as JSON text), a regular
    expression (`regex`) or a Lark grammar (`grammar`, llguidance's dialect). Generation stops
    once the text is complete (finish reason "stop"); `max_tokens` may cut it first.

    Invariants: `kind` in GUIDE_KINDS; `spec` a non-empty str of at most 64 Ki characters; a
    json_schema spec is a JSON object or boolean; the guide compiles (llguidance's grammar
    check, without a tokenizer; ValueError with its message otherwise).
    """

    kind: str
    spec: str

    def __post_init__(self) -> None:
        if self.kind not in GUIDE_KINDS:
            raise ValueError(f"guide kind must be one of {list(GUIDE_KINDS)}, got {self.kind!r}")
        if not isinstance(self.spec, str) or not self.spec:
            raise ValueError(f"a {self.kind} guide's spec must be a non-empty string")
        if len(self.spec) > MAX_GUIDE_CHARS:
            raise ValueError(f"a guide's spec has at most {MAX_GUIDE_CHARS} chars, got "
                             f"{len(self.spec)}")  # fmt: skip
        if self.kind == "json_schema":
            try:
                schema = json.loads(self.spec)
            except json.JSONDecodeError as exc:
                raise ValueError(f"a json_schema guide's spec is not JSON: {exc}") from None
            if not isinstance(schema, (dict, bool)):
                raise ValueError("a json_schema guide's spec must be a JSON object or boolean")
        from llguidance import LLMatcher

        error = LLMatcher.validate_grammar(self.grammar)
        if error:
            raise ValueError(f"the {self.kind} guide does not compile: {error}")

    @functools.cached_property
    def grammar(self) -> str:
        """The guide as an llguidance grammar (built once: the check here and each engine's
        compile share it). JSON as json.dumps writes it (", " and ": ", no
        other whitespace): small models given free whitespace fill it with newlines
        (SmolLM2-135M wrote 40 tokens of an unfinished object); and objects that list their
        properties have no others unless the schema says so (xgrammar's strict mode, vLLM's
        default): a 135M model added `"type": "number"` to a calculator's arguments."""
        from llguidance import LLMatcher

        if self.kind == "json_schema":
            schema = _closed(json.loads(self.spec))
            return LLMatcher.grammar_from_json_schema(schema, defaults=_COMPACT_JSON)
        if self.kind == "regex":
            return LLMatcher.grammar_from_regex(self.spec)
        return LLMatcher.grammar_from_lark(self.spec)

    @classmethod
    def json(cls, schema: dict[str, Any] | bool) -> Guide:
        """Output that is JSON matching `schema` ({"type": "object"}: any JSON object)."""
        return cls("json_schema", json.dumps(schema, ensure_ascii=False))

    @classmethod
    def of(cls, value: Guide | dict[str, Any]) -> Guide:
        """A Guide, or one from its to_dict form ({"kind", "spec"})."""
        if isinstance(value, Guide):
            return value
        if not isinstance(value, dict) or set(value) != {"kind", "spec"}:
            raise ValueError(f"guide must be a Guide or {{'kind', 'spec'}}, got {value!r}")
        return cls(value["kind"], value["spec"])


def json_rule(schema: dict[str, Any]) -> str:
    """A Lark rule body (`%json {...}`) that matches JSON of `schema` written as Guide.json's
    guides are (compact, objects closed), for grammars that embed JSON among other text."""
    options = {"x-guidance": _COMPACT_JSON}
    return "%json " + json.dumps({**_closed(schema), **options}, ensure_ascii=False)


def _closed(schema: Any) -> Any:
    """`schema` with `"additionalProperties": false` on every object schema that lists
    `properties` and says nothing about others."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _closed(value) for key, value in schema.items()}
    if "properties" in out and not {"additionalProperties", "patternProperties"} & set(out):
        out["additionalProperties"] = False
    return out
