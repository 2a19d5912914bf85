"""Engine handles: what ServeCore needs from an engine, whether in this process or another one.

The executor places each call on a handle and streams its outputs; prefix sharing pins prefixes
through it; placement reads its stats. LocalEngine wraps an in-process AsyncEngine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from parrotlet.engine.outputs import EngineStats, RequestOutput
from parrotlet.engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from parrotlet.engine.async_engine import AsyncEngine


class EngineDiedError(RuntimeError):
    """The engine serving a request went away; the request may be re-run elsewhere."""


@dataclass(frozen=True)
class ModelInfo:
    """The model every engine of a ServeCore serves (engines must agree on it)."""

    name: str
    max_model_len: int
    eos_token_ids: tuple[int, ...]


class EngineHandle(Protocol):
    """One engine as ServeCore sees it. Every method runs on ServeCore's event loop.

    `generate` yields RequestOutputs until one is finished; it raises EngineDiedError if the
    engine is lost mid-request. A pin keeps a prefix's KV blocks until `unpin`.
    """

    name: str

    @property
    def alive(self) -> bool: ...

    def generate(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        *,
        priority: int,
        cache_namespace: str,
        group: str | None = None,
    ) -> AsyncIterator[RequestOutput]: ...

    async def pin_prefix(self, prompt: Sequence[int], cache_namespace: str) -> str: ...

    async def unpin(self, pin_id: str) -> None: ...

    def cached_prefix_len(self, prompt: Sequence[int], cache_namespace: str) -> int: ...

    def stats(self) -> EngineStats: ...

    async def close(self) -> None: ...


class LocalEngine:
    """An AsyncEngine in this process behind the EngineHandle interface."""

    def __init__(self, engine: AsyncEngine, name: str = "local-0") -> None:
        self.async_engine = engine
        self.name = name

    @property
    def alive(self) -> bool:
        return True

    def generate(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        *,
        priority: int,
        cache_namespace: str,
        group: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        return self.async_engine.generate(
            list(prompt), params, priority=priority, cache_namespace=cache_namespace, group=group
        )

    async def pin_prefix(self, prompt: Sequence[int], cache_namespace: str) -> str:
        pin = await self.async_engine.pin_prefix(list(prompt), cache_namespace)
        return pin.pin_id

    async def unpin(self, pin_id: str) -> None:
        await self.async_engine.unpin(pin_id)

    def cached_prefix_len(self, prompt: Sequence[int], cache_namespace: str) -> int:
        """Read between steps is not guaranteed; a racy read is fine for placement decisions."""
        return self.async_engine.engine.cached_prefix_len(list(prompt), cache_namespace)

    def stats(self) -> EngineStats:
        return self.async_engine.engine.stats()

    async def close(self) -> None:
        await self.async_engine.close()
