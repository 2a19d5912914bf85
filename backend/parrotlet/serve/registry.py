"""EngineRegistry: engine workers (`parrotlet engine-worker`) register with the server and
heartbeat; each becomes a RemoteEngine in ServeCore's engine list, and one silent past the timeout
is dropped (its calls re-queue elsewhere). Also the /v1/engines routes the workers call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import httpx
from fastapi import APIRouter, Depends, Request

from parrotlet.engine.outputs import EngineStats
from parrotlet.serve.auth import request_engine_admin
from parrotlet.serve.engine_wire import HeartbeatBody, RegisterBody, stats_from_dict, stats_to_dict
from parrotlet.serve.engines import EngineHandle, ModelInfo
from parrotlet.serve.errors import NotFoundError
from parrotlet.serve.remote_engine import RemoteEngine

if TYPE_CHECKING:
    from parrotlet.engine.config import EngineConfig

logger = logging.getLogger(__name__)


class EngineRegistry:
    """The remote engines of one ServeCore, kept in (and dropped from) its `engines` list.

    The liveness sweep starts with the first registration and runs every `sweep_interval_s`.
    A worker registering again under a live name replaces the old engine (whose calls re-queue).
    """

    def __init__(
        self,
        engines: list[EngineHandle],
        model: ModelInfo,
        block_size: int,
        *,
        heartbeat_timeout_s: float = 3.0,
        sweep_interval_s: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.engines = engines
        self.model = model
        self.block_size = block_size
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.sweep_interval_s = sweep_interval_s
        self.transport = transport  # tests route workers in-process
        self.remotes: dict[str, RemoteEngine] = {}
        self._retired: list[tuple[float, RemoteEngine]] = []
        self._sweeper: asyncio.Task[None] | None = None

    def register(self, body: RegisterBody) -> RemoteEngine:
        """Add a worker; ValueError if it serves another model or cannot hold the context."""
        self._check_compatible(body)
        old = self.remotes.get(body.name)
        if old is not None:
            self._drop(old, "it registered again")
        engine = RemoteEngine(
            body.name,
            body.url,
            block_size=body.block_size,
            token=body.token,
            heartbeat_timeout_s=self.heartbeat_timeout_s,
            transport=self.transport,
        )
        self.remotes[body.name] = engine
        self.engines.append(engine)
        self._start_sweeper()
        logger.info("engine %s registered at %s", body.name, body.url)
        return engine

    def heartbeat(self, name: str, stats: EngineStats) -> None:
        """NotFoundError for a worker not registered (any more): it should register again."""
        engine = self.remotes.get(name)
        if engine is None:
            raise NotFoundError(f"engine {name!r} is not registered")
        engine.heartbeat(stats)

    def sweep(self) -> list[str]:
        """Drop the engines that are no longer alive; returns their names."""
        dead = [e for e in self.remotes.values() if not e.alive]
        for engine in dead:
            self._drop(engine, f"no heartbeat for {self.heartbeat_timeout_s:g} s or a lost request")
        return [e.name for e in dead]

    def describe(self) -> list[dict[str, Any]]:
        """Every engine (local ones have no url) with its stats (GET /v1/engines)."""
        return [
            {
                "name": e.name,
                "url": e.url if isinstance(e, RemoteEngine) else None,
                "alive": e.alive,
                "stats": stats_to_dict(e.stats()),
            }
            for e in self.engines
        ]

    async def wait_for(self, count: int, timeout_s: float) -> None:
        """Wait until `count` live engines are registered (TimeoutError after `timeout_s`)."""
        async with asyncio.timeout(timeout_s):
            while sum(e.alive for e in self.remotes.values()) < count:
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for _, engine in self._retired:
            await engine.close()
        self._retired.clear()

    def _check_compatible(self, body: RegisterBody) -> None:
        if body.model != self.model.name:
            raise ValueError(f"model: the server serves {self.model.name!r}, not {body.model!r}")
        if body.max_model_len < self.model.max_model_len:
            raise ValueError(
                f"max_model_len: the server needs {self.model.max_model_len}, "
                f"the engine has {body.max_model_len}"
            )
        if body.block_size != self.block_size:
            raise ValueError(
                f"block_size: the server uses {self.block_size}, the engine {body.block_size}"
            )

    def _drop(self, engine: RemoteEngine, reason: str) -> None:
        """Out of placement at once; its connections close once in-flight streams timed out."""
        engine.mark_dead(reason)
        self.remotes.pop(engine.name, None)
        if engine in self.engines:
            self.engines.remove(engine)
        self._retired.append((time.monotonic(), engine))

    def _start_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            self.sweep()
            await self._close_retired()

    async def _close_retired(self) -> None:
        cutoff = time.monotonic() - 2 * self.heartbeat_timeout_s
        while self._retired and self._retired[0][0] < cutoff:
            await self._retired.pop(0)[1].close()


def load_model_info(engine_config: EngineConfig) -> tuple[Any, ModelInfo]:
    """The tokenizer and ModelInfo of `engine_config`'s model without loading its weights (a
    server whose engines are all workers)."""
    from parrotlet.engine.models.default_model import resolve_model_path
    from parrotlet.engine.models.loader import load_config
    from parrotlet.engine.tokenizer import load_tokenizer

    path = resolve_model_path(engine_config.model)
    config = load_config(path)
    limit = config.max_position_embeddings
    max_model_len = min(engine_config.max_model_len or limit, limit)
    return load_tokenizer(path), ModelInfo(path.name, max_model_len, config.eos_token_ids)


# ---- routes the workers call (with one of the server's API keys when authentication is on) ---
router = APIRouter(prefix="/v1/engines", dependencies=[Depends(request_engine_admin)])


def _registry(request: Request) -> EngineRegistry:
    return request.app.state.core.registry


@router.post("/register")
async def register(body: RegisterBody, request: Request) -> dict[str, Any]:
    registry = _registry(request)
    engine = registry.register(body)
    return {"name": engine.name, "heartbeat_timeout_s": registry.heartbeat_timeout_s}


@router.post("/heartbeat")
async def heartbeat(body: HeartbeatBody, request: Request) -> dict[str, bool]:
    _registry(request).heartbeat(body.name, stats_from_dict(body.stats))
    return {"ok": True}


@router.get("")
async def list_engines(request: Request) -> list[dict[str, Any]]:
    return _registry(request).describe()
