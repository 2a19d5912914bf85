"""SemanticVariable: the app's future for a value produced on the server, and the transforms
(join, format, slice, …) that derive new variables server-side without a client round trip.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence

import regex

from parrotlet.api.session import Session, current_session, resolve_session
from parrotlet.graph.ir import PerfCriterion, Transform
from parrotlet.graph.transforms import check_transform_args
from parrotlet.serve.results import VariableResult

__all__ = ["SemanticVariable", "format", "join", "variable"]


class SemanticVariable:
    """A named text value of one session, set once: by a call, a transform or the client.

    Fetching (`get`, `aget`, `stream`, `astream`) first submits the session's pending increment
    (one request for all calls built so far), then asks for this value (one request); the server
    runs whatever it depends on without further round trips. A fetched value is cached.
    """

    def __init__(self, session: Session, name: str) -> None:
        self.session = session
        self.name = name
        self._result: VariableResult | None = None

    # ---- fetching ------------------------------------------------------------------------
    def get(self, criterion: str | PerfCriterion = "latency", timeout: float | None = None) -> str:
        """Block until the value is set and return it (ServeTimeoutError after `timeout` s)."""
        return self.get_result(criterion, timeout).value

    async def aget(
        self, criterion: str | PerfCriterion = "latency", timeout: float | None = None
    ) -> str:
        """`get` for async code: awaits without blocking the caller's event loop."""
        return (await self.aget_result(criterion, timeout)).value

    def get_result(
        self, criterion: str | PerfCriterion = "latency", timeout: float | None = None
    ) -> VariableResult:
        """Like `get`, with the finish reason and token counts of the producing call."""
        if self._result is None:
            coro = self.session._fetch(self.name, _criterion(criterion), _timeout(timeout))
            self._result = self.session.call(coro)
        return self._result

    async def aget_result(
        self, criterion: str | PerfCriterion = "latency", timeout: float | None = None
    ) -> VariableResult:
        if self._result is None:
            coro = self.session._fetch(self.name, _criterion(criterion), _timeout(timeout))
            self._result = await self.session.acall(coro)
        return self._result

    def stream(self, criterion: str | PerfCriterion = "latency") -> Iterator[str]:
        """The value's text deltas as they are generated; they concatenate to `get()`."""
        if self.session.portal is None:
            raise RuntimeError("this session is offline (no client): it can only build graphs")
        return self.session.portal.iterate(self.session._stream(self.name, _criterion(criterion)))

    def astream(self, criterion: str | PerfCriterion = "latency") -> AsyncIterator[str]:
        """`stream` for async code."""
        if self.session.portal is None:
            raise RuntimeError("this session is offline (no client): it can only build graphs")
        return self.session.portal.aiterate(self.session._stream(self.name, _criterion(criterion)))

    def set(self, value: str) -> None:
        """Give a declared variable its value: in the pending increment if it is still there
        (no request), else on the server (after submitting what is pending)."""
        if not isinstance(value, str):
            raise TypeError(f"value of variable {self.name!r} must be a str")
        if not self.session.set_pending_value(self.name, value):
            self.session.call(self.session._set(self.name, value))

    async def aset(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"value of variable {self.name!r} must be a str")
        if not self.session.set_pending_value(self.name, value):
            await self.session.acall(self.session._set(self.name, value))

    # ---- server-side transforms ----------------------------------------------------------
    def slice(self, start: int | None = None, stop: int | None = None) -> SemanticVariable:
        """Characters `value[start:stop]`."""
        for field, bound in (("start", start), ("stop", stop)):
            if bound is not None and (not isinstance(bound, int) or isinstance(bound, bool)):
                raise TypeError(f"slice {field} must be an int or None, got {bound!r}")
        return _transform(self.session, "slice", [self], {"start": start, "stop": stop})

    def split(self, sep: str | None = None, index: int = 0) -> SemanticVariable:
        """Part `index` of `value.split(sep)` ("" when out of range)."""
        if sep is not None and (not isinstance(sep, str) or not sep):
            raise ValueError(f"split sep must be a non-empty str or None, got {sep!r}")
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"split index must be an int, got {index!r}")
        return _transform(self.session, "split", [self], {"sep": sep, "index": index})

    def json_field(self, path: str) -> SemanticVariable:
        """The field at dotted `path` ("a.b.0") of the value parsed as JSON; non-strings as JSON."""
        if not isinstance(path, str):
            raise TypeError(f"json_field path must be a str, got {path!r}")
        return _transform(self.session, "json_field", [self], {"path": path})

    def regex(self, pattern: str, group: int | str = 0) -> SemanticVariable:
        """Group `group` of the first match of `pattern` ("" when nothing matches). The server
        matches with the `regex` module (`re`'s syntax and more); a search that runs longer than
        a second (a pattern that backtracks without end) fails the variable."""
        try:
            compiled = regex.compile(pattern)
        except (regex.error, TypeError) as exc:
            raise ValueError(f"regex pattern {pattern!r} is invalid: {exc}") from None
        if isinstance(group, int) and not 0 <= group <= compiled.groups:
            raise ValueError(f"regex group {group} out of range (pattern has {compiled.groups})")
        if isinstance(group, str) and group not in compiled.groupindex:
            raise ValueError(f"regex group {group!r} is not a named group of {pattern!r}")
        return _transform(self.session, "regex", [self], {"pattern": pattern, "group": group})

    def strip(self) -> SemanticVariable:
        """The value without leading and trailing whitespace."""
        return _transform(self.session, "strip", [self], {})

    def __repr__(self) -> str:
        return f"SemanticVariable({self.name!r}, session={self.session.id!r})"


def variable(name: str | None = None, value: str | None = None) -> SemanticVariable:
    """Declare a variable in the current session; without `value`, `.set()` it before its
    consumers can run. `name` (letters, digits, '_', '-') defaults to a generated "var-N"."""
    session = current_session()
    if name is None:
        name = session.new_id("var")
        session.declare(name, value)
    else:
        session.declare(name, value, user=True)
    return SemanticVariable(session, name)


def join(values: Iterable[SemanticVariable | str], sep: str = "\n") -> SemanticVariable:
    """`sep.join(values)` on the server (str items become constant variables)."""
    if not isinstance(sep, str):
        raise TypeError(f"join sep must be a str, got {sep!r}")
    items = list(values)
    if not items:
        raise ValueError("join needs at least one value")
    session = resolve_session(v.session for v in items if isinstance(v, SemanticVariable))
    return _transform(session, "join", items, {"sep": sep})


def format(
    template: str, *args: SemanticVariable | str, **kwargs: SemanticVariable | str
) -> SemanticVariable:
    """`template.format(*args, **kwargs)` on the server, over the values of variables. Fields
    are plain `{}`, `{0}` or `{name}` (no attribute or item access, conversion or format spec).

    Wire form: inputs are the positional values then the named ones; `names` names the inputs
    in order (a positional input is named by its index, which `{0}` reads positionally anyway).
    """
    if not isinstance(template, str):
        raise TypeError(f"format template must be a str, got {template!r}")
    _check_format_fields(template, len(args), kwargs)
    items = [*args, *kwargs.values()]
    if not items:
        raise ValueError("format needs at least one value")
    session = resolve_session(v.session for v in items if isinstance(v, SemanticVariable))
    extra = {"names": [*map(str, range(len(args))), *kwargs]} if kwargs else {}
    return _transform(session, "format", items, {"template": template, **extra})


def _check_format_fields(template: str, num_args: int, kwargs: dict[str, object]) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"format template {template!r} is malformed: {exc}") from None
    for field in fields:
        key = re.split(r"[.\[]", field, maxsplit=1)[0]
        if key == "" or key.isdigit():
            if key.isdigit() and int(key) >= num_args:
                raise ValueError(f"format field {{{field}}} has no positional value")
        elif key not in kwargs:
            raise ValueError(f"format field {{{field}}} has no keyword value")


def _transform(
    session: Session, op: str, items: Sequence[SemanticVariable | str], args: dict[str, object]
) -> SemanticVariable:
    for i, item in enumerate(items):
        if not isinstance(item, (SemanticVariable, str)):
            raise TypeError(f"{op} input {i} must be a SemanticVariable or str, got {item!r}")
    node_id = session.new_id(op)
    entries = [(f"{op} input {i}", item, f"{node_id}.{i}") for i, item in enumerate(items)]
    # the server's checks, here where the error points at the caller's line
    check_transform_args(Transform(node_id, op, tuple(e[2] for e in entries), node_id, args))
    inputs = input_variables(session, entries)
    session.add_transform(Transform(node_id, op, tuple(inputs), node_id, args))
    return SemanticVariable(session, node_id)


def input_variables(
    session: Session, entries: Sequence[tuple[str, SemanticVariable | str, str]]
) -> list[str]:
    """The variables that inputs read, for `(field, item, const_name)` entries: a
    SemanticVariable of `session` is read as is; a str becomes a new constant variable
    `const_name`. Everything is checked before anything is declared."""
    for field, item, _ in entries:
        if isinstance(item, SemanticVariable):
            if item.session is not session:
                raise ValueError(f"{field}: variable {item.name!r} belongs to another session")
        elif not isinstance(item, str):
            raise TypeError(f"{field} must be a SemanticVariable or str, got {type(item).__name__}")
    names = []
    for _, item, const_name in entries:
        if isinstance(item, str):
            session.declare(const_name, item)
            names.append(const_name)
        else:
            names.append(item.name)
    return names


def _criterion(value: str | PerfCriterion) -> PerfCriterion:
    try:
        return PerfCriterion(value)
    except ValueError:
        raise ValueError(f"criterion must be 'latency' or 'throughput', got {value!r}") from None


def _timeout(value: float | None) -> float | None:
    ok = value is None or (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )
    if not ok:
        raise ValueError(f"timeout must be None or a number > 0, got {value!r}")
    return value
