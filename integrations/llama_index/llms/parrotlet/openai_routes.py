"""The server's OpenAI-compatible routes as the LlamaIndex LLM uses them, for what one graph Call
cannot express: a conversation of several messages (the server renders it with the model's chat
template) and the model card. Requests go through `client.openai` (parrotlet.api.openai_routes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock

if TYPE_CHECKING:
    from parrotlet.api import Client

CHAT = "/v1/chat/completions"
_ROLES = ("system", "developer", "user", "assistant", "tool")


def chat(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    """The chat completion of `body` (OpenAI-shaped)."""
    return client.openai.post(CHAT, {**body, "stream": False})


async def achat(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    return await client.openai.apost(CHAT, {**body, "stream": False})


def stream_chat(client: Client, body: dict[str, Any]) -> Iterator[str]:
    """The text deltas of a streamed chat completion."""
    for event in client.openai.stream(CHAT, {**body, "stream": True}):
        yield from _texts(event)


async def astream_chat(client: Client, body: dict[str, Any]) -> AsyncIterator[str]:
    async for event in client.openai.astream(CHAT, {**body, "stream": True}):
        for text in _texts(event):
            yield text


def model_card(client: Client) -> dict[str, Any]:
    """The served model's card: `id` and `max_model_len`."""
    core = client.core
    if core is not None:
        return {"id": core.model_name, "max_model_len": core.max_model_len}
    return client.openai.get("/v1/models")["data"][0]


def _texts(event: dict[str, Any]) -> Iterable[str]:
    return [choice.get("delta", {}).get("content") or "" for choice in event.get("choices", [])]


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
