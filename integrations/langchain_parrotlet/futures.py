"""SemanticText: a model output inside a graph scope — a `str` whose characters are a reference
to a Semantic Variable until Python reads it. Prompt templates carry the reference into the next
prompt, where the model adapters turn it into an Input segment (step 1 of the request path).
"""

from __future__ import annotations

import re
import string
import sys
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Ref", "SemanticText", "aresolve", "parts_of", "resolve", "resolve_text"]

OPEN, CLOSE = "\ue000", "\ue001"  # private-use code points: never produced by a tokenizer
_MARK = re.compile(f"{OPEN}([0-9a-z]+)#([^{OPEN}{CLOSE}]+){CLOSE}")
_FORMAT_FIELD = string.Formatter.format_field.__code__
_SCOPES: weakref.WeakValueDictionary[str, Resolver] = weakref.WeakValueDictionary()


class Resolver(Protocol):
    """What a reference needs from its graph scope (scope.GraphScope implements it)."""

    id: str

    @property
    def open(self) -> bool: ...

    def known(self, var: str) -> bool: ...

    def value(self, var: str) -> str: ...

    async def avalue(self, var: str) -> str: ...


def register(scope: Resolver) -> None:
    """Make `scope`'s references resolvable from text while the scope is alive."""
    _SCOPES[scope.id] = scope


@dataclass(frozen=True, eq=False)
class Ref:
    """A reference to output variable `var` of graph scope `scope`."""

    scope: Resolver
    var: str

    @property
    def marker(self) -> str:
        return f"{OPEN}{self.scope.id}#{self.var}{CLOSE}"


Part = str | Ref


def parts_of(text: str) -> tuple[Part, ...]:
    """The constant text and references `text` is made of (a SemanticText keeps its own).

    ValueError when a reference's graph scope no longer exists.
    """
    if isinstance(text, SemanticText):
        return text.parts
    if OPEN not in text:
        return (text,) if text else ()
    parts: list[Part] = []
    pos = 0
    for match in _MARK.finditer(text):
        scope = _SCOPES.get(match.group(1))
        if scope is None:
            raise ValueError(
                f"text refers to parrotlet output {match.group(2)!r} of a graph scope that no "
                "longer exists; resolve outputs (str(x)) before their scope is gone"
            )
        if match.start() > pos:
            parts.append(text[pos : match.start()])
        parts.append(Ref(scope, match.group(2)))
        pos = match.end()
    if pos < len(text):
        parts.append(text[pos:])
    return tuple(parts)


def resolve_text(text: str) -> str:
    """`text` with every reference replaced by its value (fetching what is not known yet)."""
    if isinstance(text, SemanticText):
        return text.resolve()
    if OPEN not in text:
        return text
    return "".join(p if isinstance(p, str) else p.scope.value(p.var) for p in parts_of(text))


async def aresolve_text(text: str) -> str:
    """`resolve_text` for async code: waits without blocking the caller's event loop."""
    if isinstance(text, SemanticText):
        return await text.aresolve()
    if OPEN not in text:
        return str.__str__(text)
    values = [p if isinstance(p, str) else await p.scope.avalue(p.var) for p in parts_of(text)]
    return "".join(values)


def resolve(value: Any) -> Any:
    """`value` with every SemanticText / referencing str inside it (lists, tuples, dicts,
    LangChain messages, prompt values and documents) replaced by real text."""
    if isinstance(value, str):
        return resolve_text(value)
    if isinstance(value, (list, tuple)):
        return type(value)(resolve(v) for v in value)
    if isinstance(value, dict):
        return {k: resolve(v) for k, v in value.items()}
    field = _text_field(value)
    if field is None:
        return value
    return value.model_copy(update={field: resolve(getattr(value, field))})


async def aresolve(value: Any) -> Any:
    """`resolve` for async code."""
    if isinstance(value, str):
        return await aresolve_text(value)
    if isinstance(value, (list, tuple)):
        return type(value)([await aresolve(v) for v in value])
    if isinstance(value, dict):
        return {k: await aresolve(v) for k, v in value.items()}
    field = _text_field(value)
    if field is None:
        return value
    return value.model_copy(update={field: await aresolve(getattr(value, field))})


def _text_field(value: Any) -> str | None:
    """The text-bearing field of a LangChain message, prompt value, generation or document."""
    if not hasattr(value, "model_copy"):
        return None
    for name in ("content", "messages", "page_content", "text"):
        if isinstance(getattr(value, name, None), (str, list)) and name in type(value).model_fields:
            return name
    return None


def _plain(value: Any) -> Any:
    return resolve_text(value) if isinstance(value, str) else value


class SemanticText(str):
    """The text of a model output that may not be generated yet.

    Its characters (what C code such as `re`, `json` or `str.join` reads) are reference markers;
    every Python-level use — `str()`, `print`, f-strings, `==`, `len`, `in`, iteration, indexing
    and every `str` method — first resolves it (one submit of the pending graph, one fetch) and
    then behaves exactly like the real text. Three uses keep the reference instead: LangChain
    f-string prompt templates (`string.Formatter`), `+` with other text (a composite future), and
    passing it to a parrotlet model. Immutable; copies are the same object.
    """

    parts: tuple[Part, ...]
    _text: str | None

    def __new__(cls, parts: tuple[Part, ...]) -> SemanticText:
        marked = "".join(p if isinstance(p, str) else p.marker for p in parts)
        obj = super().__new__(cls, marked)
        obj.parts = parts
        obj._text = None
        return obj

    @property
    def resolved(self) -> bool:
        """True when every reference's value is known here (reading needs no request)."""
        return self._text is not None or all(
            isinstance(p, str) or p.scope.known(p.var) for p in self.parts
        )

    def resolve(self) -> str:
        """The real text (a plain str), fetching the values it refers to."""
        if self._text is None:
            values = (p if isinstance(p, str) else p.scope.value(p.var) for p in self.parts)
            self._text = "".join(values)
        return self._text

    async def aresolve(self) -> str:
        """`resolve` for async code: awaits the fetch instead of blocking the event loop."""
        if self._text is None:
            values = [p if isinstance(p, str) else await p.scope.avalue(p.var) for p in self.parts]
            self._text = "".join(values)
        return self._text

    def reference(self) -> str:
        """The marked characters: constant text plus reference markers (a plain str)."""
        return str.__str__(self)

    def _carries_reference(self) -> bool:
        return not self.resolved and all(isinstance(p, str) or p.scope.open for p in self.parts)

    # ---- conversions -------------------------------------------------------------------
    def __str__(self) -> str:
        return self.resolve()

    def __repr__(self) -> str:
        return repr(self.resolve())

    def __format__(self, spec: str) -> str:
        # LangChain's f-string templates format through string.Formatter.format_field.
        called_by_template = sys._getframe(1).f_code is _FORMAT_FIELD
        if spec == "" and called_by_template and self._carries_reference():
            return self.reference()
        return format(self.resolve(), spec)

    def __int__(self) -> int:
        return int(self.resolve())

    def __float__(self) -> float:
        return float(self.resolve())

    def __reduce__(self) -> tuple[Any, ...]:
        return (str, (self.resolve(),))

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return self.__reduce__()

    def __copy__(self) -> SemanticText:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> SemanticText:
        return self

    # ---- comparisons and containers ----------------------------------------------------
    def __eq__(self, other: object) -> bool:
        return self.resolve() == _plain(other)

    def __ne__(self, other: object) -> bool:
        return self.resolve() != _plain(other)

    def __lt__(self, other: str) -> bool:
        return self.resolve() < _plain(other)

    def __le__(self, other: str) -> bool:
        return self.resolve() <= _plain(other)

    def __gt__(self, other: str) -> bool:
        return self.resolve() > _plain(other)

    def __ge__(self, other: str) -> bool:
        return self.resolve() >= _plain(other)

    def __hash__(self) -> int:
        return hash(self.resolve())

    def __len__(self) -> int:
        return len(self.resolve())

    def __iter__(self) -> Iterator[str]:
        return iter(self.resolve())

    def __getitem__(self, key: Any) -> str:
        return self.resolve()[key]

    def __contains__(self, item: object) -> bool:
        return _plain(item) in self.resolve()

    # ---- building new text -------------------------------------------------------------
    def __add__(self, other: object) -> Any:
        if not isinstance(other, str):
            return NotImplemented
        return SemanticText(self.parts + parts_of(other))

    def __radd__(self, other: object) -> Any:
        if not isinstance(other, str):
            return NotImplemented
        return SemanticText(parts_of(other) + self.parts)

    def __mul__(self, count: Any) -> str:
        return self.resolve() * count

    __rmul__ = __mul__

    def __mod__(self, args: Any) -> str:
        return self.resolve() % resolve(args)

    def __rmod__(self, template: Any) -> Any:
        return _plain(template) % self.resolve() if isinstance(template, str) else NotImplemented

    def join(self, items: Any) -> str:
        return self.resolve().join(resolve_text(i) if isinstance(i, str) else i for i in items)


def _delegate(name: str) -> Any:
    method = getattr(str, name)

    def call(self: SemanticText, *args: Any, **kwargs: Any) -> Any:
        args = tuple(_plain(a) for a in args)
        kwargs = {k: _plain(v) for k, v in kwargs.items()}
        return method(self.resolve(), *args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = method.__doc__
    return call


for _name in dir(str):
    if not _name.startswith("_") and _name not in ("join", "maketrans"):
        setattr(SemanticText, _name, _delegate(_name))
