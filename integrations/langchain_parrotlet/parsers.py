"""Output parsers meet futures: LangChain parsers copy their input into a pydantic `str` field,
which would freeze a SemanticText into its reference characters. These hooks (installed when the
first graph scope opens) make `StrOutputParser` pass a future through unchanged and make every
other parser read real text (resolving first), so parsing behaves exactly as in plain LangChain.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.output_parsers.base import BaseGenerationOutputParser, BaseOutputParser

from langchain_parrotlet.futures import OPEN, SemanticText, aresolve_text, resolve

_LOCK = threading.Lock()
_INSTALLED = False


def install_parser_hooks() -> None:
    """Wrap `invoke` / `ainvoke` of LangChain's two parser bases (idempotent). Inputs without
    futures or references take the original code path unchanged."""
    global _INSTALLED
    with _LOCK:
        if _INSTALLED:
            return
        for cls in (BaseOutputParser, BaseGenerationOutputParser):
            cls.invoke = _hook(cls.invoke)  # type: ignore[method-assign]
            cls.ainvoke = _ahook(cls.ainvoke)  # type: ignore[method-assign]
        _INSTALLED = True


def _text_of(value: Any) -> str | None:
    """The text a parser would read from `value`, when it is a future or carries references."""
    if isinstance(value, BaseMessage):
        value = value.content
    if isinstance(value, SemanticText) or (isinstance(value, str) and OPEN in value):
        return value
    return None


def _passes_text_through(parser: Any) -> bool:
    """True for StrOutputParser and subclasses that keep its identity parse."""
    kind = type(parser)
    return (
        isinstance(parser, StrOutputParser)
        and kind.parse is StrOutputParser.parse
        and kind.parse_result is StrOutputParser.parse_result
    )


def _hook(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def invoke(self: Any, input: Any, config: Any = None, **kwargs: Any) -> Any:
        text = _text_of(input)
        if text is not None:
            if _passes_text_through(self):
                return self._call_with_config(lambda _: text, input, config, run_type="parser")
            input = resolve(input)
        return original(self, input, config, **kwargs)

    return invoke


def _ahook(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def ainvoke(self: Any, input: Any, config: Any = None, **kwargs: Any) -> Any:
        text = _text_of(input)
        if text is not None:
            if _passes_text_through(self):
                return await self._acall_with_config(
                    _async_constant(text), input, config, run_type="parser"
                )
            real = await aresolve_text(text)
            input = input.model_copy(update={"content": real}) if _is_message(input) else real
        return await original(self, input, config, **kwargs)

    return ainvoke


def _is_message(value: Any) -> bool:
    return isinstance(value, BaseMessage)


def _async_constant(value: str) -> Callable[[Any], Any]:
    async def constant(_: Any) -> str:
        return value

    return constant
