"""The server's OpenAI-compatible routes, for what one graph Call cannot express: a conversation
of several messages (the server renders it with the model's chat template) and the model card.
Requests run on the Client's portal loop: over HTTP, or in-process through the same FastAPI app.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import httpx
from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock

from parrotlet.api.http import HttpTransport, error_from_response

if TYPE_CHECKING:
    from parrotlet.api import Client
    from parrotlet.api.portal import Portal

_IN_PROCESS_URL = "http://parrotlet.in-process"
_ROLES = ("system", "developer", "user", "assistant", "tool")


class OpenAIRoutes:
    """`/v1/chat/completions` and `/v1/models` of the server a Client talks to.

    A remote client's requests go through its own httpx connection (base URL, API key, pool);
    an in-process client's through the server's FastAPI app over httpx.ASGITransport (auth
    off), so both modes share one code path.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self._app: Any = None

    @property
    def portal(self) -> Portal:
        return self.client.portal

    # ---- sync / async front ends ---------------------------------------------------------
    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.portal.call(self._post_chat(body))

    async def achat(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.portal.acall(self._post_chat(body))

    def stream_chat(self, body: dict[str, Any]) -> Iterator[str]:
        return self.portal.iterate(self._stream_chat(body))

    def astream_chat(self, body: dict[str, Any]) -> AsyncIterator[str]:
        return self.portal.aiterate(self._stream_chat(body))

    def model_card(self) -> dict[str, Any]:
        """The served model's card: `id` and `max_model_len`."""
        core = self.client.core
        if core is not None:
            return {"id": core.model_name, "max_model_len": core.max_model_len}
        return self.portal.call(self._get_models())["data"][0]

    # ---- requests (on the portal loop) ---------------------------------------------------
    @contextlib.asynccontextmanager
    async def _http(self) -> AsyncIterator[httpx.AsyncClient]:
        transport = self.client._transport
        if isinstance(transport, HttpTransport):
            yield transport._http  # the Client's own connection (not ours to close)
            return
        if self._app is None:
            from parrotlet.serve.app import create_app
            from parrotlet.serve.auth import ApiKeys

            self._app = create_app(self.client.core, ApiKeys())
        asgi = httpx.ASGITransport(app=self._app)
        async with httpx.AsyncClient(transport=asgi, base_url=_IN_PROCESS_URL) as http:
            yield http

    async def _post_chat(self, body: dict[str, Any]) -> dict[str, Any]:
        async with self._http() as http:
            response = await http.post("/v1/chat/completions", json={**body, "stream": False})
        if response.is_error:
            raise error_from_response(response.status_code, response.content)
        return response.json()

    async def _stream_chat(self, body: dict[str, Any]) -> AsyncIterator[str]:
        """The text deltas of a streamed chat completion."""
        request = {**body, "stream": True}
        async with (
            self._http() as http,
            http.stream("POST", "/v1/chat/completions", json=request) as response,
        ):
            if response.is_error:
                raise error_from_response(response.status_code, await response.aread())
            async for line in response.aiter_lines():
                data = line.removeprefix("data:").strip()
                if not line.startswith("data:") or not data:
                    continue
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if "error" in event:
                    raise error_from_response(response.status_code, data.encode())
                for choice in event.get("choices", []):
                    yield choice.get("delta", {}).get("content") or ""

    async def _get_models(self) -> dict[str, Any]:
        async with self._http() as http:
            response = await http.get("/v1/models")
        if response.is_error:
            raise error_from_response(response.status_code, response.content)
        return response.json()


def openai_messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """LlamaIndex messages as OpenAI chat messages; ValueError names a message that has another
    role or non-text content."""
    if not messages:
        raise ValueError("messages must not be empty")
    result = []
    for i, message in enumerate(messages):
        role = MessageRole(message.role).value
        if role not in _ROLES:
            raise ValueError(f"messages[{i}].role {role!r} is not one of {list(_ROLES)}")
        if not all(isinstance(block, TextBlock) for block in message.blocks):
            raise ValueError(f"messages[{i}] has non-text content; Parrotlet serves text only")
        result.append({"role": role, "content": message.content or ""})
    return result
