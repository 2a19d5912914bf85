"""Server-side transforms between calls: pure string functions, so map -> join -> reduce stays on
the server without running any user code. ServeCore's executor applies them when inputs are set.

A tenant's graph must not be able to stall or exhaust the server: outputs are bounded in size
(checked before a join or format builds them), format fields are plain names, and a regex runs
in the `regex` module with a time limit (it releases the GIL, so the executor runs it off the
event loop).
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Sequence
from typing import Any

import regex

from parrotlet.graph.ir import GraphError, Transform

_MAX_PATTERN = 1000
REGEX_TIMEOUT_S = 1.0  # a search longer than this is backtracking without end: the transform fails
# ops that may take up to REGEX_TIMEOUT_S without holding the GIL: run them off the event loop
OFF_LOOP_OPS = frozenset({"regex"})


def apply_transform(t: Transform, values: Sequence[str], max_chars: int) -> str:
    """The output value of `t` for its input values (in `t.inputs` order); GraphError when it
    fails or its output would exceed `max_chars`."""
    values = list(values)
    if t.op in _SIZES:
        _check_size(t, _SIZES[t.op](t, values), max_chars)
    try:
        out = _OPS[t.op](t, values)
    except GraphError:
        raise
    except TimeoutError:
        raise GraphError(
            f"transform {t.id!r} (regex) gave up after {REGEX_TIMEOUT_S:g} s: the pattern "
            "backtracks without end on this input"
        ) from None
    except (ValueError, KeyError, IndexError, TypeError, RecursionError, regex.error) as exc:
        raise GraphError(f"transform {t.id!r} ({t.op}) failed: {exc}") from None
    _check_size(t, len(out), max_chars)
    return out


def _check_size(t: Transform, chars: int, max_chars: int) -> None:
    if chars > max_chars:
        raise GraphError(
            f"transform {t.id!r} ({t.op}) would output {chars} chars, the limit is {max_chars}"
        )


def check_transform_args(t: Transform) -> None:
    """Reject bad args at submit time, before inputs are known; GraphError names the transform."""
    spec = _ARGS[t.op]
    unknown = sorted(set(t.args) - set(spec))
    if unknown:
        raise GraphError(f"transform {t.id!r} ({t.op}) has unknown args {unknown}")
    for name, kind in spec.items():
        if name in t.args and not isinstance(t.args[name], kind):
            raise GraphError(f"transform {t.id!r} ({t.op}): arg {name!r} has the wrong type")
    if t.op in ("slice", "split", "json_field", "regex", "strip") and len(t.inputs) != 1:
        raise GraphError(f"transform {t.id!r} ({t.op}) takes exactly one input")
    if t.op == "format":
        _check_template(t)
    if t.op == "regex":
        pattern = t.args.get("pattern")
        if not isinstance(pattern, str) or len(pattern) > _MAX_PATTERN:
            raise GraphError(f"transform {t.id!r} (regex) needs a 'pattern' of at most 1000 chars")
        try:
            regex.compile(pattern)
        except regex.error as exc:
            raise GraphError(f"transform {t.id!r} (regex): bad pattern: {exc}") from None


def _check_template(t: Transform) -> None:
    """Fields are `{}`, `{0}` or `{name}`: no attribute or item access, conversion or format spec
    (a width alone could ask for gigabytes), so the output's size is known before it is built."""
    template = t.args.get("template")
    if not isinstance(template, str):
        raise GraphError(f"transform {t.id!r} (format) needs a string arg 'template'")
    for name, conversion, spec in _fields(t, template):
        if conversion or spec or not (name == "" or name.isdigit() or name.isidentifier()):
            field = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise GraphError(
                f"transform {t.id!r} (format): field {{{field}}} must be a plain {{}}, {{0}} or "
                "{name} (no attribute or item access, conversion or format spec)"
            )


def _fields(t: Transform, template: str) -> list[tuple[str, str | None, str]]:
    """(name, conversion, spec) of each replacement field of `template`."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise GraphError(f"transform {t.id!r} (format): malformed template: {exc}") from None
    return [(name, conv, spec) for _, name, spec, conv in parsed if name is not None]


def _join(t: Transform, values: list[str]) -> str:
    return str(t.args.get("sep", "\n")).join(values)


def _format(t: Transform, values: list[str]) -> str:
    names = t.args.get("names") or []
    named = dict(zip(names, values, strict=False))
    return str(t.args["template"]).format(*values, **named)


def _slice(t: Transform, values: list[str]) -> str:
    return values[0][t.args.get("start") : t.args.get("stop")]


def _split(t: Transform, values: list[str]) -> str:
    parts = values[0].split(t.args.get("sep"))
    index = t.args.get("index", 0)
    return parts[index] if -len(parts) <= index < len(parts) else ""


def _json_field(t: Transform, values: list[str]) -> str:
    node: Any = json.loads(values[0])
    for key in str(t.args.get("path", "")).split("."):
        if key == "":
            continue
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node if isinstance(node, str) else json.dumps(node)


def _regex(t: Transform, values: list[str]) -> str:
    match = regex.search(t.args["pattern"], values[0], timeout=REGEX_TIMEOUT_S)
    return match.group(t.args.get("group", 0)) or "" if match else ""


def _strip(t: Transform, values: list[str]) -> str:
    return values[0].strip()


_OPS: dict[str, Callable[[Transform, list[str]], str]] = {
    "join": _join,
    "format": _format,
    "slice": _slice,
    "split": _split,
    "json_field": _json_field,
    "regex": _regex,
    "strip": _strip,
}


def _join_size(t: Transform, values: list[str]) -> int:
    return sum(map(len, values)) + len(str(t.args.get("sep", "\n"))) * max(len(values) - 1, 0)


def _format_size(t: Transform, values: list[str]) -> int:
    """The formatted length (plain fields only, _check_template): literals plus field values."""
    template = str(t.args["template"])
    by_name = dict(zip(t.args.get("names") or [], values, strict=False))
    size, auto = 0, 0
    for literal, name, _, _ in string.Formatter().parse(template):
        size += len(literal)
        if name is None:
            continue
        if name == "":
            name, auto = str(auto), auto + 1
        value = values[int(name)] if name.isdigit() and int(name) < len(values) else None
        size += len(by_name.get(name, "") if value is None else value)
    return size


# output sizes computed before the output is built, for the ops that can grow their inputs
_SIZES: dict[str, Callable[[Transform, list[str]], int]] = {
    "join": _join_size,
    "format": _format_size,
}

_ARGS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "join": {"sep": str},
    "format": {"template": str, "names": list},
    "slice": {"start": (int, type(None)), "stop": (int, type(None))},
    "split": {"sep": (str, type(None)), "index": int},
    "json_field": {"path": str},
    "regex": {"pattern": str, "group": (int, str)},
    "strip": {},
}
