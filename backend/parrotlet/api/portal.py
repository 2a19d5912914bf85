"""Portal: the Client's background event-loop thread. The sync API runs the one async
implementation (sessions, transports, an in-process ServeCore) on it; the async API awaits it.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")
_END = object()


class Portal:
    """An event loop running in a daemon thread, owned by one Client.

    Everything that touches a transport or an in-process ServeCore runs on this loop, so objects
    bound to a loop (httpx pools, asyncio events, engine tasks) always see the same one.
    Blocking calls from the portal's own thread would deadlock and raise RuntimeError instead.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="parrotlet-portal", daemon=True
        )
        self._thread.start()
        # a client never closed (a script's last line) is closed at exit, its tasks cancelled,
        # rather than torn down mid-task ("Task was destroyed but it is pending!")
        self._finalizer = weakref.finalize(self, _stop, self.loop, self._thread)

    @property
    def closed(self) -> bool:
        return self.loop.is_closed()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedule `coro` on the portal's loop."""
        if self.closed:
            coro.close()
            raise RuntimeError("the parrotlet client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the portal and block until it returns (the sync API)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("blocking parrotlet call from the client's own event loop")
        return self.submit(coro).result()

    async def acall(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the portal and await it from any other event loop (the async API)."""
        return await asyncio.wrap_future(self.submit(coro))

    def iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        """Drive an async iterator that lives on the portal from synchronous code."""
        try:
            while (item := self.call(_next(items))) is not _END:
                yield item  # type: ignore[misc]
        finally:
            if hasattr(items, "aclose") and not self.closed:
                self.call(items.aclose())

    async def aiterate(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """Drive an async iterator that lives on the portal from another event loop."""
        try:
            while (item := await self.acall(_next(items))) is not _END:
                yield item  # type: ignore[misc]
        finally:
            if hasattr(items, "aclose") and not self.closed:
                await self.acall(items.aclose())

    def close(self) -> None:
        """Cancel what still runs on the loop, stop it and join the thread (idempotent)."""
        self._finalizer()


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    if loop.is_closed():
        return
    if thread.is_alive():
        asyncio.run_coroutine_threadsafe(_cancel_others(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
    loop.close()


async def _next(items: AsyncIterator[Any]) -> Any:
    try:
        return await anext(items)
    except StopAsyncIteration:
        return _END


async def _cancel_others() -> None:
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()
