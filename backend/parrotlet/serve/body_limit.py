"""BodyLimit: the outermost layer of the HTTP server, before any route: a request body over
ServeConfig.max_request_bytes is refused with 413. Routes read a body whole into memory to
parse its JSON, so without a limit one request could exhaust the server every session shares.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parrotlet.serve.wire import error_payload


class BodyLimit:
    """ASGI middleware: a declared Content-Length over `max_bytes` is answered 413 at once; a
    body sent without one (chunked) fails with 413 as soon as it grows past `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            status, body = error_payload(self._too_large(declared))
            await JSONResponse(body, status_code=status)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large(received, at_least=True)
            return message

        await self.app(scope, counted, send)

    def _too_large(self, size: int, at_least: bool = False) -> HTTPException:
        what = f"at least {size}" if at_least else str(size)
        return HTTPException(
            413, f"request body has {what} bytes, the limit is {self.max_bytes} (max_request_bytes)"
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
