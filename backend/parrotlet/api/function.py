"""`@semantic_function`: a Python function whose docstring is a prompt template becomes a builder
of graph Calls — the first step of the request path (calling it adds a Call to the session).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, overload

from parrotlet.api.session import resolve_session
from parrotlet.api.variable import SemanticVariable, input_variables
from parrotlet.engine.guide import Guide
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.graph import ir

__all__ = ["Output", "SemanticFunction", "parse_template", "semantic_function"]

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_SPEC = re.compile(r"\s*(input|output)\s*:\s*([A-Za-z_][A-Za-z0-9_]*)\s*")
_EMPTY = inspect.Parameter.empty


@dataclass(frozen=True)
class Output:
    """Default value of an output parameter: that output's sampling, e.g.
    `def f(x, answer=P.Output(max_tokens=8, stop="\\n"))`.

    Fields left None inherit the `@semantic_function(...)` defaults, then SamplingParams' own.
    Invalid values raise ValueError naming the field when the Output is built.
    """

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    max_tokens: int | None = None
    stop: str | Sequence[str] | None = None
    ignore_eos: bool | None = None
    guide: Guide | None = None  # structured output, e.g. Guide.json(schema)
    logprobs: int | None = None  # each token's logprob and k likeliest: VariableResult.logprobs
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: Mapping[int, float] | None = None  # token id -> bias added to its logit

    def __post_init__(self) -> None:
        SamplingParams(**self.overrides())

    def overrides(self) -> dict[str, Any]:
        """The fields that are set, as SamplingParams keyword arguments."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {name: value for name, value in values.items() if value is not None}


def parse_template(prompt: str) -> tuple[ir.Segment, ...]:
    """Split a prompt into Text, Input and Output segments; placeholders name parameters.

    `{{input:name}}` / `{{output:name}}` (spaces inside allowed); any other `{{...}}` is a
    ValueError naming it, so a typo never silently becomes prompt text. Outputs carry default
    sampling here; SemanticFunction fills in the real one.
    """
    segments: list[ir.Segment] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(prompt):
        spec = _SPEC.fullmatch(match.group(1))
        if spec is None:
            raise ValueError(
                f"placeholder {match.group(0)!r} must be {{{{input:name}}}} or {{{{output:name}}}}"
            )
        if match.start() > pos:
            segments.append(ir.Text(prompt[pos : match.start()]))
        kind, name = spec.groups()
        segments.append(ir.Input(name) if kind == "input" else ir.Output(name))
        pos = match.end()
    if pos < len(prompt):
        segments.append(ir.Text(prompt[pos:]))
    return tuple(segments)


class SemanticFunction:
    """A prompt template with named inputs and outputs; each call adds one Call to the session.

    The prompt is the function's docstring normalized by `inspect.cleandoc`: leading and trailing
    blank lines go, tabs become spaces and the common indentation of the lines after the first is
    removed; everything else (inner newlines, spaces around placeholders) is sent verbatim.
    Every placeholder names a parameter and every parameter appears in a placeholder; an input
    parameter may default to a str, an output parameter to an `Output` (its sampling).

    Attributes:
        name: the function's name; call ids are "{name}-{n}", outputs "{name}-{n}.{param}".
        template: the segments, naming parameters; Output segments carry their final sampling.
        inputs / outputs: parameter names in signature order.
        chat: whether the text before the first output is sent through the chat template.
    """

    def __init__(
        self, fn: Callable[..., Any], sampling: Mapping[str, Any] | None = None, chat: bool = True
    ) -> None:
        if not isinstance(chat, bool):
            raise TypeError(f"chat must be a bool, got {chat!r}")
        functools.update_wrapper(self, fn)
        self.name: str = fn.__name__
        self.chat = chat
        raw = parse_template(_prompt_of(fn))
        params = inspect.signature(fn).parameters
        roles = _roles(raw, self.name)
        _check_parameters(params, roles, self.name)
        self.inputs = tuple(p for p in params if roles[p] == "input")
        self.outputs = tuple(p for p in params if roles[p] == "output")
        self.template = _with_sampling(raw, params, dict(sampling or {}), self.name)
        self._bind = inspect.Signature([params[p] for p in self.inputs]).bind

    def __call__(
        self, *args: SemanticVariable | str, **kwargs: SemanticVariable | str
    ) -> SemanticVariable | tuple[SemanticVariable, ...]:
        """Add the call to the session of its inputs (else the current one) and return its
        output variable, or a tuple of them in parameter order. Nothing is sent yet."""
        for key in kwargs:
            if key in self.outputs:
                raise TypeError(f"{self.name}(): {key!r} is an output; it is returned, not passed")
        try:
            bound = self._bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}(): {exc}") from None
        bound.apply_defaults()
        values = bound.arguments
        for param in self.inputs:
            if not isinstance(values[param], (SemanticVariable, str)):
                raise TypeError(
                    f"{self.name}(): input {param!r} must be a SemanticVariable or str, "
                    f"got {type(values[param]).__name__}"
                )
        sources = (v.session for v in values.values() if isinstance(v, SemanticVariable))
        session = resolve_session(sources)
        call_id = session.new_id(self.name)
        entries = [(f"{self.name}() input {p!r}", values[p], f"{call_id}.{p}") for p in self.inputs]
        names = dict(zip(self.inputs, input_variables(session, entries), strict=True))
        names.update({p: f"{call_id}.{p}" for p in self.outputs})
        session.add_call(ir.Call(call_id, _instantiate(self.template, names), self.chat))
        results = tuple(SemanticVariable(session, names[p]) for p in self.outputs)
        return results[0] if len(results) == 1 else results

    def __repr__(self) -> str:
        return f"<semantic function {self.name}({', '.join((*self.inputs, *self.outputs))})>"


@overload
def semantic_function(fn: Callable[..., Any], /) -> SemanticFunction: ...
@overload
def semantic_function(
    fn: None = None, /, *, chat: bool = True, **sampling: Any
) -> Callable[[Callable[..., Any]], SemanticFunction]: ...
def semantic_function(
    fn: Callable[..., Any] | None = None, /, *, chat: bool = True, **sampling: Any
) -> SemanticFunction | Callable[[Callable[..., Any]], SemanticFunction]:
    """Decorate a function whose docstring is a prompt template (bare or with arguments).

    `sampling` takes Output's fields (temperature, max_tokens, stop, guide, logprobs, the
    penalties, logit_bias, ...): the defaults of every output (None: SamplingParams' default);
    an output parameter's `Output(...)` default overrides them field by field.
    """
    defaults = Output(**sampling).overrides()

    def decorate(f: Callable[..., Any]) -> SemanticFunction:
        return SemanticFunction(f, defaults, chat)

    return decorate if fn is None else decorate(fn)


def _prompt_of(fn: Callable[..., Any]) -> str:
    doc = fn.__doc__
    if not isinstance(doc, str) or not doc.strip():
        raise ValueError(f"{fn.__name__}: the docstring (the prompt template) is empty")
    return inspect.cleandoc(doc)


def _roles(segments: tuple[ir.Segment, ...], fn: str) -> dict[str, str]:
    roles: dict[str, str] = {}
    for seg in segments:
        if isinstance(seg, ir.Text):
            continue
        kind = "input" if isinstance(seg, ir.Input) else "output"
        previous = roles.setdefault(seg.var, kind)
        if previous != kind:
            raise ValueError(f"{fn}: {seg.var!r} is used both as an input and as an output")
        if kind == "output" and sum(getattr(s, "var", None) == seg.var for s in segments) > 1:
            raise ValueError(f"{fn}: placeholder {{{{output:{seg.var}}}}} appears more than once")
    if "output" not in roles.values():
        raise ValueError(f"{fn}: the prompt has no {{{{output:name}}}} placeholder")
    return roles


def _check_parameters(
    params: Mapping[str, inspect.Parameter], roles: dict[str, str], fn: str
) -> None:
    for name, kind in roles.items():
        if name not in params:
            raise ValueError(f"{fn}: placeholder {{{{{kind}:{name}}}}} names no parameter")
    for name, param in params.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ValueError(f"{fn}: parameter {name!r}: *args and **kwargs are not supported")
        if name not in roles:
            raise ValueError(
                f"{fn}: parameter {name!r} appears in no {{{{input:{name}}}}} or "
                f"{{{{output:{name}}}}} placeholder of the prompt"
            )
        default = param.default
        if roles[name] == "input" and default is not _EMPTY and not isinstance(default, str):
            raise ValueError(f"{fn}: input {name!r} may only default to a str, got {default!r}")
        if roles[name] == "output" and default is not _EMPTY and not isinstance(default, Output):
            raise ValueError(
                f"{fn}: output {name!r} may only default to parrotlet.Output(...), got {default!r}"
            )


def _with_sampling(
    segments: tuple[ir.Segment, ...],
    params: Mapping[str, inspect.Parameter],
    defaults: dict[str, Any],
    fn: str,
) -> tuple[ir.Segment, ...]:
    resolved: list[ir.Segment] = []
    for seg in segments:
        if isinstance(seg, ir.Output):
            spec = params[seg.var].default
            overrides = spec.overrides() if isinstance(spec, Output) else {}
            try:
                seg = ir.Output(seg.var, SamplingParams(**{**defaults, **overrides}))
            except ValueError as exc:
                raise ValueError(f"{fn}: output {seg.var!r}: {exc}") from None
        resolved.append(seg)
    return tuple(resolved)


def _instantiate(template: tuple[ir.Segment, ...], names: dict[str, str]) -> tuple[ir.Segment, ...]:
    """The template's segments with parameter names replaced by this call's variable names."""
    segments: list[ir.Segment] = []
    for seg in template:
        if isinstance(seg, ir.Input):
            seg = ir.Input(names[seg.var])
        elif isinstance(seg, ir.Output):
            seg = ir.Output(names[seg.var], seg.sampling)
        segments.append(seg)
    return tuple(segments)
