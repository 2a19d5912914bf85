"""Server-side transforms between calls: pure string functions, so map -> join -> reduce stays on
the server without running any user code. ServeCore's executor applies them when inputs are set.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from parrotlet.graph.ir import GraphError, Transform

_MAX_PATTERN = 1000


def apply_transform(t: Transform, values: Sequence[str]) -> str:
    """The output value of `t` for its input values (in `t.inputs` order)."""
    try:
        return _OPS[t.op](t, list(values))
    except GraphError:
        raise
    except (ValueError, KeyError, IndexError, TypeError, re.error) as exc:
        raise GraphError(f"transform {t.id!r} ({t.op}) failed: {exc}") from None


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
    if t.op == "format" and not isinstance(t.args.get("template"), str):
        raise GraphError(f"transform {t.id!r} (format) needs a string arg 'template'")
    if t.op == "regex":
        pattern = t.args.get("pattern")
        if not isinstance(pattern, str) or len(pattern) > _MAX_PATTERN:
            raise GraphError(f"transform {t.id!r} (regex) needs a 'pattern' of at most 1000 chars")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise GraphError(f"transform {t.id!r} (regex): bad pattern: {exc}") from None


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
    match = re.search(t.args["pattern"], values[0])
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

_ARGS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "join": {"sep": str},
    "format": {"template": str, "names": list},
    "slice": {"start": (int, type(None)), "stop": (int, type(None))},
    "split": {"sep": (str, type(None)), "index": int},
    "json_field": {"path": str},
    "regex": {"pattern": str, "group": (int, str)},
    "strip": {},
}
