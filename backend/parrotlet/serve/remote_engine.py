"""RemoteEngine: an engine worker process (engine/worker.py) behind the EngineHandle interface.

The registry creates one per registered worker; the executor streams calls through it over HTTP
(JSON lines); a lost connection or silence past the heartbeat timeout raises EngineDiedError.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, NoReturn

import httpx

from parrotlet.engine.outputs import EngineStats, RequestOutput
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.serve.engine_wire import (
    GenerateBody,
    PrefixBody,
    UnpinBody,
    empty_stats,
    output_from_dict,
    stats_from_dict,
)
from parrotlet.serve.engines import EngineDiedError
from parrotlet.serve.prefix_index import PrefixIndex

logger = logging.getLogger(__name__)


class RemoteEngine:
    """One worker, seen from the server. Every method runs on ServeCore's event loop.

    Alive while a heartbeat came within `heartbeat_timeout_s` and no request to it failed at the
    connection level since. `cached_prefix_len` answers from the prompts this server sent to the
    worker (bounded by its KV capacity), so placement never waits on the network. The worker
    sends a blank keep-alive line every second of a quiet stream, so a stream silent for
    `heartbeat_timeout_s` means the worker is gone.
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        block_size: int,
        token: str = "",
        heartbeat_timeout_s: float = 3.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._clock = clock
        self._stats = empty_stats(block_size)
        self._last_heartbeat = clock()
        self._failed_at: float | None = None
        self._closed = False
        self._sent = PrefixIndex(block_size)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            transport=transport,
            timeout=httpx.Timeout(heartbeat_timeout_s, connect=heartbeat_timeout_s, pool=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
        )

    # ---- liveness -----------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        if self._closed or self._failed_at is not None:
            return False
        return self._clock() - self._last_heartbeat <= self.heartbeat_timeout_s

    def heartbeat(self, stats: EngineStats) -> None:
        """The worker reported in: it is alive again (even after a failed request)."""
        self._last_heartbeat = self._clock()
        self._failed_at = None
        self._stats = stats
        capacity = stats.num_blocks if stats.num_blocks > 1 else None
        self._sent.max_blocks = capacity

    def mark_dead(self, reason: str) -> None:
        if self._failed_at is None:
            logger.warning("engine %s (%s) is dead: %s", self.name, self.url, reason)
            self._failed_at = self._clock()
            self._sent.clear()

    def stats(self) -> EngineStats:
        """The last heartbeat's stats."""
        return self._stats

    def cached_prefix_len(self, prompt: Sequence[int], cache_namespace: str) -> int:
        return self._sent.match_len(prompt, cache_namespace)

    # ---- requests -----------------------------------------------------------------------
    async def generate(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        *,
        priority: int,
        cache_namespace: str,
        group: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream the worker's outputs. ValueError for a request the worker rejected, RuntimeError
        for an engine failure there, EngineDiedError when the worker is lost."""
        self._check_alive()
        body = GenerateBody(
            prompt=list(prompt),
            sampling=params.to_dict(),
            priority=priority,
            cache_namespace=cache_namespace,
            group=group,
        )
        self._sent.record(prompt, cache_namespace)
        async with contextlib.aclosing(self._stream_lines("/generate", body.model_dump())) as lines:
            async for item in lines:
                if "stream_error" in item:
                    kind = ValueError if item.get("invalid") else RuntimeError
                    raise kind(f"engine {self.name}: {item['stream_error']}")
                out = output_from_dict(item)
                yield out
                if out.finished:
                    self._sent.record([*prompt, *out.token_ids], cache_namespace)
                    return
        self.mark_dead("the output stream ended before the request finished")
        raise EngineDiedError(f"engine {self.name} closed the stream of an unfinished request")

    async def pin_prefix(self, prompt: Sequence[int], cache_namespace: str) -> str:
        """Prefill and pin `prompt` on the worker; returns once its prefill is done."""
        self._check_alive()
        body = PrefixBody(prompt=list(prompt), cache_namespace=cache_namespace)
        self._sent.record(prompt, cache_namespace)
        async with contextlib.aclosing(self._stream_lines("/pin", body.model_dump())) as lines:
            async for item in lines:
                if "stream_error" in item:
                    raise RuntimeError(f"engine {self.name}: {item['stream_error']}")
                return str(item["pin_id"])
        self.mark_dead("the pin stream ended without a pin id")
        raise EngineDiedError(f"engine {self.name} closed the stream of an unfinished pin")

    async def unpin(self, pin_id: str) -> None:
        if self.alive:
            await self._request("POST", "/unpin", UnpinBody(pin_id=pin_id).model_dump())

    async def fetch_cached_prefix_len(self, prompt: Sequence[int], cache_namespace: str) -> int:
        """The worker's own answer (a network round trip; placement uses `cached_prefix_len`)."""
        body = PrefixBody(prompt=list(prompt), cache_namespace=cache_namespace)
        reply = await self._request("POST", "/cached_prefix_len", body.model_dump())
        return int(reply["num_tokens"])

    async def fetch_stats(self) -> EngineStats:
        """The worker's stats now (a network round trip; `stats` is the last heartbeat's)."""
        return stats_from_dict(await self._request("GET", "/stats"))

    async def close(self) -> None:
        """Close the connections (the worker process keeps running)."""
        self._closed = True
        await self._client.aclose()

    # ---- HTTP ---------------------------------------------------------------------------
    def _check_alive(self) -> None:
        if not self.alive:
            raise EngineDiedError(f"engine {self.name} is not alive")

    async def _stream_lines(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The JSON objects of a JSON-lines response (keep-alive blank lines skipped)."""
        try:
            async with self._client.stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    _raise_for_status(self.name, response)
                async for line in response.aiter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.TransportError as exc:
            self._lost(exc)

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        self._check_alive()
        try:
            response = await self._client.request(method, path, json=body)
        except httpx.TransportError as exc:
            self._lost(exc)
        _raise_for_status(self.name, response)
        return response.json() if response.content else {}

    def _lost(self, exc: httpx.TransportError) -> NoReturn:
        self.mark_dead(f"{type(exc).__name__}: {exc}")
        raise EngineDiedError(f"engine {self.name} was lost: {exc!r}") from exc


def _raise_for_status(name: str, response: httpx.Response) -> None:
    """A 4xx from the worker is a bad request (ValueError); anything else non-2xx RuntimeError."""
    if response.is_success:
        return
    try:
        message = response.json().get("error", response.text)
    except ValueError:
        message = response.text
    kind = ValueError if 400 <= response.status_code < 500 else RuntimeError
    raise kind(f"engine {name}: HTTP {response.status_code}: {message}")
