"""The server's OpenAI-compatible routes as the LlamaIndex LLM uses them, for what one graph Call
cannot express: a conversation of several messages (the server renders it with the model's chat
template), tool calling, and the model card. Requests go through `client.openai`
(parrotlet.api.openai_routes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ChatDelta:
    """A piece of a streamed chat reply: text, and the tool calls that came with it."""

    text: str
    tool_calls: tuple[dict[str, Any], ...] = ()
    logprobs: tuple[dict[str, Any], ...] = ()  # OpenAI's `logprobs.content` entries


def stream_chat(client: Client, body: dict[str, Any]) -> Iterator[ChatDelta]:
    """The deltas of a streamed chat completion."""
    for event in client.openai.stream(CHAT, {**body, "stream": True}):
        yield from _deltas(event)


async def astream_chat(client: Client, body: dict[str, Any]) -> AsyncIterator[ChatDelta]:
    async for event in client.openai.astream(CHAT, {**body, "stream": True}):
        for delta in _deltas(event):
            yield delta


def model_card(client: Client) -> dict[str, Any]:
    """The served model's card: `id` and `max_model_len`."""
    core = client.core
    if core is not None:
        return {"id": core.model_name, "max_model_len": core.max_model_len}
    return client.openai.get("/v1/models")["data"][0]


def _deltas(event: dict[str, Any]) -> Iterable[ChatDelta]:
    return [_delta(choice) for choice in event.get("choices", [])]


def _delta(choice: dict[str, Any]) -> ChatDelta:
    delta, logprobs = choice.get("delta", {}), choice.get("logprobs") or {}
    return ChatDelta(delta.get("content") or "", tuple(delta.get("tool_calls") or ()),
                     tuple(logprobs.get("content") or ()))  # fmt: skip


def openai_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """LlamaIndex messages as OpenAI chat messages (with an assistant message's tool calls and
    a tool message's call id); ValueError names a message that has another role or non-text
    content."""
    if not messages:
        raise ValueError("messages must not be empty")
    result = []
    for i, message in enumerate(messages):
        role = MessageRole(message.role).value
        if role not in _ROLES:
            raise ValueError(f"messages[{i}].role {role!r} is not one of {list(_ROLES)}")
        if not all(isinstance(block, TextBlock) for block in message.blocks):
            raise ValueError(f"messages[{i}] has non-text content; Parrotlet serves text only")
        out: dict[str, Any] = {"role": role, "content": message.content or ""}
        extra = message.additional_kwargs
        if role == "assistant" and extra.get("tool_calls"):
            out["tool_calls"] = extra["tool_calls"]  # OpenAI's, as a reply carried them
        if role == "tool" and "tool_call_id" in extra:
            out["tool_call_id"] = extra["tool_call_id"]
        result.append(out)
    return result
