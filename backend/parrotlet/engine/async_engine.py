"""AsyncEngine: drives an LLMEngine from asyncio and streams each request's outputs.

The step runs in the engine's own thread (torch releases the GIL) while the event loop keeps
serving; not in the loop's shared pool, where tenants' regexes and tokenizing could queue it.
Adds and aborts are queued and applied by the loop between steps, so the engine needs no locks.
Engines of one process that share a CUDA device take turns step by step (a CUDA graph capture
forbids other threads' work on the device, and concurrent steps would gain nothing on one GPU).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from parrotlet.engine.engine import LLMEngine, PrefixPin
from parrotlet.engine.outputs import RequestOutput

logger = logging.getLogger(__name__)
_DEVICE_LOCKS: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)


class AsyncEngine:
    """Event-driven loop around one engine: it sleeps until work arrives, never polls."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._streams: dict[str, asyncio.Queue[RequestOutput | BaseException]] = {}
        self._pending: list[tuple[Callable[[], Any], asyncio.Future[Any] | None]] = []
        self._wakeup = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._closing = False
        device = engine.device
        self._device_lock = _DEVICE_LOCKS[str(device)] if device.type == "cuda" else None
        self._stepper = ThreadPoolExecutor(1, thread_name_prefix="parrotlet-engine-step")

    async def generate(
        self, prompt: Any, params: Any = None, **kwargs: Any
    ) -> AsyncIterator[RequestOutput]:
        """Yield a request's outputs step by step until it finishes (aborted if the caller leaves).

        Takes LLMEngine.add_request's arguments; its validation errors are raised here.
        """
        guides = self.engine.guides
        if getattr(params, "guide", None) is not None and not guides.ready:
            await asyncio.to_thread(guides.prepare)  # ~0.4 s once: not on the event loop
        async for out in self._follow(lambda: self.engine.add_request(prompt, params, **kwargs)):
            yield out

    async def pin_prefix(self, prompt: Any, cache_namespace: str = "") -> PrefixPin:
        """Prefill `prompt` and keep its full blocks cached until `unpin`; returns once done."""
        pin_id = ""
        async for out in self._follow(lambda: self.engine.pin_prefix(prompt, cache_namespace)):
            pin_id = out.request_id
        pin = await self.call(lambda: self.engine.pin(pin_id))
        assert pin is not None, f"pin {pin_id!r} finished without its blocks"
        return pin

    async def unpin(self, pin_id: str) -> None:
        await self.call(lambda: self.engine.unpin(pin_id))

    async def _follow(self, add: Callable[[], str]) -> AsyncIterator[RequestOutput]:
        """Add a request between steps and yield its outputs until it finishes."""
        queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()

        def add_and_listen() -> str:
            request_id = add()
            self._streams[request_id] = queue
            return request_id

        rid = await self.call(add_and_listen)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    return
        finally:
            if self._streams.pop(rid, None) is not None:
                self._submit(lambda: self.engine.abort(rid), None)

    async def complete(self, prompt: Any, params: Any = None, **kwargs: Any) -> RequestOutput:
        """Run a request to completion and return its final output."""
        final = None
        async for final in self.generate(prompt, params, **kwargs):  # noqa: B007
            pass
        assert final is not None
        return final

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` against the engine between two steps and return its result."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._submit(fn, future)
        return await future

    async def close(self) -> None:
        """Stop the loop once the step in flight has finished (its worker thread cannot be
        interrupted: a new engine must not start on the device under it); requests still
        running fail with "engine closed"."""
        task, self._loop_task = self._loop_task, None
        if task is None:
            return
        self._closing = True
        self._wakeup.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._stepper.shutdown(wait=False)
        self._fail_all(RuntimeError("engine closed"))
        for _, future in self._pending:
            if future is not None and not future.done():
                future.set_exception(RuntimeError("engine closed"))
        self._pending.clear()

    def _submit(self, fn: Callable[[], Any], future: asyncio.Future[Any] | None) -> None:
        if self._closing:  # nothing runs any more; an abort of a closed request is moot
            if future is not None and not future.done():
                future.set_exception(RuntimeError("engine closed"))
            return
        self._pending.append((fn, future))
        loop = asyncio.get_running_loop()
        task = self._loop_task
        if task is None or task.done() or task.get_loop() is not loop:
            self._wakeup = asyncio.Event()  # events bind to the loop that first waits on them
            self._loop_task = loop.create_task(self._run())
        self._wakeup.set()

    async def _run(self) -> None:
        while not self._closing:
            self._apply_pending()
            if not self.engine.has_unfinished():
                self._wakeup.clear()
                if not self._pending:
                    await self._wakeup.wait()
                continue
            try:
                loop = asyncio.get_running_loop()
                outputs = await loop.run_in_executor(self._stepper, self._step)
            except Exception as exc:  # a failed step fails its requests, not the server
                logger.exception("engine step failed; failing its %d requests", len(self._streams))
                self._fail_all(exc)
                continue
            for out in outputs:
                queue = self._streams.get(out.request_id)
                if queue is not None:
                    queue.put_nowait(out)

    def _step(self) -> list[RequestOutput]:
        if self._device_lock is None:
            return self.engine.step()
        with self._device_lock:
            return self.engine.step()

    def _apply_pending(self) -> None:
        pending, self._pending = self._pending, []
        for fn, future in pending:
            try:
                result = fn()
            except Exception as exc:
                if future is not None and not future.done():
                    future.set_exception(exc)
                continue
            if future is not None and not future.done():
                future.set_result(result)

    def _fail_all(self, exc: Exception) -> None:
        for rid, queue in list(self._streams.items()):
            queue.put_nowait(RuntimeError(f"engine step failed: {exc!r}"))
            self.engine.abort(rid)
            self._streams.pop(rid)
