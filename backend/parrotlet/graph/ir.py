"""Graph IR: variables, semantic calls (templates of text / input / output segments), transforms.

The app API builds these, the Client sends them as JSON (`to_dict` / `from_dict`), and ServeCore
validates and executes them. Every type here is immutable and free of torch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from parrotlet.engine.sampling_params import SamplingParams


class GraphError(ValueError):
    """A graph that cannot be accepted; the message names the offending call or variable."""


class PerfCriterion(enum.StrEnum):
    """How the app will consume a variable: as soon as possible, or as part of bulk work."""

    LATENCY = "latency"
    THROUGHPUT = "throughput"

    def joined(self, other: PerfCriterion | None) -> PerfCriterion:
        """The criterion of a variable fetched both ways (`other` None: not fetched before):
        LATENCY wins over THROUGHPUT."""
        return PerfCriterion.LATENCY if other is PerfCriterion.LATENCY else self


@dataclass(frozen=True)
class Text:
    """Constant prompt text."""

    text: str


@dataclass(frozen=True)
class Input:
    """The value of a Semantic Variable, spliced into the prompt."""

    var: str


@dataclass(frozen=True)
class Output:
    """A Semantic Variable generated at this point of the prompt with `sampling`."""

    var: str
    sampling: SamplingParams = field(default_factory=SamplingParams)


@dataclass(frozen=True)
class Role:
    """In a chat call, starts a new message of `role` (one of CHAT_ROLES) before the first Output;
    the Text and Input segments after it, up to the next Role or Output, are its content."""

    role: str


CHAT_ROLES = ("system", "user", "assistant")

Segment = Text | Input | Output | Role


@dataclass(frozen=True)
class Call:
    """One semantic call: a template whose Output segments are generated in order.

    With `chat`, the text up to the first Output is rendered through the model's chat template:
    as one user message, or as the messages that Role segments start (see `messages`); later
    segments continue the assistant turn as plain text.
    `objective`, `group` and `priority` are set by ServeCore's analysis, never by the client.
    """

    id: str
    segments: tuple[Segment, ...]
    chat: bool = True

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(s.var for s in self.segments if isinstance(s, Input))

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(s.var for s in self.segments if isinstance(s, Output))

    @property
    def messages(self) -> tuple[tuple[str, tuple[Text | Input, ...]], ...]:
        """The chat messages before the first Output as (role, content segments); a call
        without Role segments is one user message. Validation (graph/index.py) guarantees that
        a call with Roles starts with one."""
        messages: list[tuple[str, list[Text | Input]]] = []
        for s in self.segments:
            if isinstance(s, Output):
                break
            if isinstance(s, Role):
                messages.append((s.role, []))
            else:
                if not messages:
                    messages.append(("user", []))
                messages[-1][1].append(s)
        return tuple((role, tuple(content)) for role, content in messages) or (("user", ()),)


TRANSFORM_OPS = ("join", "format", "slice", "split", "json_field", "regex", "strip")


@dataclass(frozen=True)
class Transform:
    """A safe server-side string function from input variables to one output variable.

    ops and their args: join(sep), format(template with plain {}, {0}… or {name} fields),
    slice(start, stop), split(sep, index), json_field(path: "a.b.0"), regex(pattern, group:
    the `regex` module, time-limited), strip(). No user code runs; outputs are size-limited.
    """

    id: str
    op: str
    inputs: tuple[str, ...]
    output: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Variable:
    """A Semantic Variable declaration; `value` is set when the client provides it up front."""

    name: str
    value: str | None = None


@dataclass(frozen=True)
class Graph:
    """A graph increment submitted in one request: new variables, calls and transforms.

    Calls and transforms may reference variables declared by earlier increments of the session.
    """

    variables: tuple[Variable, ...] = ()
    calls: tuple[Call, ...] = ()
    transforms: tuple[Transform, ...] = ()

    @property
    def names(self) -> set[str]:
        """Every variable the increment declares or whose value one of its nodes produces."""
        names = {v.name for v in self.variables} | {t.output for t in self.transforms}
        return names | {name for call in self.calls for name in call.outputs}

    def to_dict(self) -> dict[str, Any]:
        return {
            "variables": [_variable_dict(v) for v in self.variables],
            "calls": [_call_dict(c) for c in self.calls],
            "transforms": [
                {
                    "id": t.id,
                    "op": t.op,
                    "inputs": list(t.inputs),
                    "output": t.output,
                    "args": dict(t.args),
                }
                for t in self.transforms
            ],
        }

    @classmethod
    def from_dict(cls, data: Any) -> Graph:
        """Parse the wire format; GraphError names the first malformed field."""
        data = _mapping(data, "graph", ("variables", "calls", "transforms"))
        return cls(
            variables=tuple(
                _parse_variable(v, f"variables[{i}]")
                for i, v in enumerate(_list(data, "variables", "graph"))
            ),
            calls=tuple(
                _parse_call(c, f"calls[{i}]") for i, c in enumerate(_list(data, "calls", "graph"))
            ),
            transforms=tuple(
                _parse_transform(t, f"transforms[{i}]")
                for i, t in enumerate(_list(data, "transforms", "graph"))
            ),
        )


# ---- wire format helpers -------------------------------------------------------------------
def _variable_dict(v: Variable) -> dict[str, Any]:
    return {"name": v.name} if v.value is None else {"name": v.name, "value": v.value}


def _call_dict(c: Call) -> dict[str, Any]:
    segments: list[dict[str, Any]] = []
    for s in c.segments:
        if isinstance(s, Text):
            segments.append({"text": s.text})
        elif isinstance(s, Input):
            segments.append({"input": s.var})
        elif isinstance(s, Role):
            segments.append({"role": s.role})
        else:
            segments.append({"output": s.var, "sampling": s.sampling.to_dict()})
    return {"id": c.id, "chat": c.chat, "segments": segments}


def _mapping(data: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise GraphError(f"{where} must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise GraphError(f"{where} has unknown fields {unknown}; allowed: {list(allowed)}")
    return data


def _list(data: dict[str, Any], key: str, where: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise GraphError(f"{where}.{key} must be a list")
    return value


def _str(data: dict[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise GraphError(f"{where}.{key} must be a non-empty string, got {value!r}")
    return value


def _parse_variable(data: Any, where: str) -> Variable:
    data = _mapping(data, where, ("name", "value"))
    value = data.get("value")
    if value is not None and not isinstance(value, str):
        raise GraphError(f"{where}.value must be a string, got {type(value).__name__}")
    return Variable(_str(data, "name", where), value)


def _parse_call(data: Any, where: str) -> Call:
    data = _mapping(data, where, ("id", "chat", "segments"))
    chat = data.get("chat", True)
    if not isinstance(chat, bool):
        raise GraphError(f"{where}.chat must be a bool")
    segments = tuple(
        _parse_segment(s, f"{where}.segments[{i}]")
        for i, s in enumerate(_list(data, "segments", where))
    )
    return Call(_str(data, "id", where), segments, chat)


def _parse_segment(data: Any, where: str) -> Segment:
    data = _mapping(data, where, ("text", "input", "output", "sampling", "role"))
    if "text" in data:
        if not isinstance(data["text"], str) or len(data) != 1:
            raise GraphError(f"{where}: a text segment is {{'text': str}}")
        return Text(data["text"])
    if "input" in data:
        if len(data) != 1:
            raise GraphError(f"{where}: an input segment is {{'input': name}}")
        return Input(_str(data, "input", where))
    if "output" in data:
        sampling = data.get("sampling", {})
        try:
            params = SamplingParams.from_dict(sampling)
        except (ValueError, TypeError) as exc:
            raise GraphError(f"{where}.sampling: {exc}") from None
        return Output(_str(data, "output", where), params)
    if "role" in data:
        role = data["role"]
        if role not in CHAT_ROLES or len(data) != 1:
            raise GraphError(f"{where}: a role segment is {{'role': one of {list(CHAT_ROLES)}}}")
        return Role(role)
    raise GraphError(f"{where} must have one of 'text', 'input', 'output', 'role'")


def _parse_transform(data: Any, where: str) -> Transform:
    data = _mapping(data, where, ("id", "op", "inputs", "output", "args"))
    op = _str(data, "op", where)
    if op not in TRANSFORM_OPS:
        raise GraphError(f"{where}.op {op!r} is not one of {list(TRANSFORM_OPS)}")
    inputs = _list(data, "inputs", where)
    if not inputs or not all(isinstance(i, str) and i for i in inputs):
        raise GraphError(f"{where}.inputs must be a non-empty list of variable names")
    args = data.get("args", {})
    if not isinstance(args, dict):
        raise GraphError(f"{where}.args must be an object")
    return Transform(_str(data, "id", where), op, tuple(inputs), _str(data, "output", where), args)
