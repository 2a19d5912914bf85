"""Converters: any LangChain Runnable — an LCEL sequence, a parallel map, a `.batch`, a compiled
LangGraph graph — as ONE parrotlet graph per invocation, returning real text (no futures escape).
"""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig

from langchain_parrotlet.futures import aresolve, resolve
from langchain_parrotlet.scope import GraphScope, connection_of

__all__ = ["GraphRunnable", "as_graph"]


class GraphRunnable(Runnable[Any, Any]):
    """Runs `bound` inside a graph scope of `target`'s server and resolves its output.

    `invoke` is one graph (one submit unless the runnable itself reads text midway); `batch`
    runs all inputs in one graph. Outputs are plain values: every SemanticText inside lists,
    dicts, messages and prompt values is replaced by its text before they are returned.
    """

    def __init__(self, bound: Runnable[Any, Any], target: Any) -> None:
        self.bound = bound
        self.connection = connection_of(target)

    @property
    def InputType(self) -> Any:
        return self.bound.InputType

    @property
    def OutputType(self) -> Any:
        return self.bound.OutputType

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        with GraphScope(self.connection):
            return resolve(self.bound.invoke(input, config, **kwargs))

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        async with GraphScope(self.connection):
            return await aresolve(await self.bound.ainvoke(input, config, **kwargs))

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        with GraphScope(self.connection, raise_on_exit=not return_exceptions):
            outputs = self.bound.batch(
                inputs, config, return_exceptions=return_exceptions, **kwargs
            )
            return [_settle(o, return_exceptions) for o in outputs]

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        async with GraphScope(self.connection, raise_on_exit=not return_exceptions):
            outputs = await self.bound.abatch(
                inputs, config, return_exceptions=return_exceptions, **kwargs
            )
            return [await _asettle(o, return_exceptions) for o in outputs]

    def __repr__(self) -> str:
        return f"as_graph({self.bound!r})"


def as_graph(runnable: Runnable[Any, Any], target: Any) -> GraphRunnable:
    """`runnable` executed as one graph per call on the server of `target` (a parrotlet model,
    Client or Connection), e.g. `as_graph(prompt | llm | StrOutputParser(), llm).batch(docs)`."""
    return GraphRunnable(runnable, target)


def _settle(output: Any, keep_errors: bool) -> Any:
    try:
        return resolve(output)
    except Exception as exc:
        if keep_errors:
            return exc
        raise


async def _asettle(output: Any, keep_errors: bool) -> Any:
    try:
        return await aresolve(output)
    except Exception as exc:
        if keep_errors:
            return exc
        raise
