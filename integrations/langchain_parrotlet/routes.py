"""How one call's text comes back to a model adapter: one request to the server's OpenAI-compatible
routes (plain invokes and streams: bodies in, text, finish reason and token counts out), or the
stream of a graph output. Both yield `Delta`s.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage, ToolMessage

from langchain_parrotlet.connection import Connection
from langchain_parrotlet.futures import aresolve_text, resolve_text

if TYPE_CHECKING:
    from langchain_parrotlet.scope import GraphScope

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


@dataclass(frozen=True)
class Delta:
    """A piece of a generated text; the last one of a call carries finish reason and usage."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_calls: tuple[dict[str, Any], ...] = ()  # OpenAI's, as the server sent them
    logprobs: tuple[dict[str, Any], ...] | None = None  # a chat's `logprobs.content` entries


def prompt_request(prompt: str, chat: bool, sampling: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(route, body) for one text prompt; with `chat` it is one user message."""
    if chat:
        return CHAT, {"messages": [{"role": "user", "content": prompt}], **sampling}
    return COMPLETIONS, {"prompt": prompt, **sampling}


def chat_request(messages: Sequence[dict[str, str]], sampling: dict[str, Any]) -> dict[str, Any]:
    return {"messages": list(messages), **sampling}


def message_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """OpenAI chat messages for LangChain messages (text, tool calls and tool results;
    references resolved)."""
    return [_openai_message(m, resolve_text(message_text(m))) for m in messages]


async def amessage_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    return [_openai_message(m, await aresolve_text(message_text(m))) for m in messages]


def _openai_message(message: BaseMessage, text: str) -> dict[str, Any]:
    out: dict[str, Any] = {"role": _role(message), "content": text}
    calls = getattr(message, "tool_calls", None)
    if calls:
        out["tool_calls"] = [
            {"id": call.get("id") or f"call_{i}", "type": "function",
             "function": {"name": call["name"], "arguments": json.dumps(call["args"])}}
            for i, call in enumerate(calls)
        ]  # fmt: skip
    if isinstance(message, ToolMessage):
        out["tool_call_id"] = message.tool_call_id
    return out


def _role(message: BaseMessage) -> str:
    role = getattr(message, "role", None) if message.type == "chat" else _ROLES.get(message.type)
    if role is None:
        raise ValueError(f"message type {message.type!r} is not supported by parrotlet")
    return role


def message_text(message: BaseMessage) -> str:
    """A message's text (str content, or its text blocks); ValueError for other blocks, except
    an AI message's tool-call blocks (its `tool_calls` carry them)."""
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(block["text"])
        elif not (_is_call_block(block) and getattr(message, "tool_calls", None)):
            raise ValueError(f"parrotlet takes text content only, got a {block!r} block")
    return "".join(parts)


def _is_call_block(block: object) -> bool:
    return isinstance(block, dict) and block.get("type") in ("tool_use", "tool_call")


def complete(connection: Connection, path: str, body: dict[str, Any]) -> Delta:
    """Send one request and wait for the whole answer."""
    return _parse(connection.openai.post(path, body), path == CHAT)


async def acomplete(connection: Connection, path: str, body: dict[str, Any]) -> Delta:
    return _parse(await connection.openai.apost(path, body), path == CHAT)


def stream(connection: Connection, path: str, body: dict[str, Any]) -> Iterator[Delta]:
    """Send one streaming request; yield text deltas, then one Delta with finish and usage."""
    events = connection.openai.stream(path, {**body, **_STREAM})
    yield from _deltas(events, path == CHAT)


async def astream(connection: Connection, path: str, body: dict[str, Any]) -> AsyncIterator[Delta]:
    events = connection.openai.astream(path, {**body, **_STREAM})
    finish: str | None = None
    async for event in events:
        delta, finish = _event(event, path == CHAT, finish)
        if delta is not None:
            yield delta


_STREAM = {"stream": True, "stream_options": {"include_usage": True}}


def _deltas(events: Iterator[dict[str, Any]], chat: bool) -> Iterator[Delta]:
    finish: str | None = None
    for event in events:
        delta, finish = _event(event, chat, finish)
        if delta is not None:
            yield delta


def _event(
    event: dict[str, Any], chat: bool, finish: str | None
) -> tuple[Delta | None, str | None]:
    """The Delta of one stream event (None for an empty one) and the finish reason so far."""
    usage = event.get("usage")
    if usage:
        return Delta("", finish, usage["prompt_tokens"], usage["completion_tokens"]), finish
    for choice in event.get("choices", []):
        delta = choice.get("delta") or {}
        text = delta.get("content") if chat else choice.get("text")
        finish = choice.get("finish_reason") or finish
        calls = tuple(delta.get("tool_calls") or ()) if chat else ()
        logprobs = _chat_logprobs(choice) if chat else None
        if text or calls or logprobs:
            return Delta(text or "", tool_calls=calls, logprobs=logprobs), finish
    return None, finish


def _parse(data: dict[str, Any], chat: bool) -> Delta:
    choice = data["choices"][0]
    text = (choice["message"]["content"] or "") if chat else choice["text"]
    usage = data.get("usage") or {}
    return Delta(
        text,
        choice.get("finish_reason"),
        usage.get("prompt_tokens", 0),
        usage.get("completion_tokens", 0),
        tuple(choice["message"].get("tool_calls") or ()) if chat else (),
        _chat_logprobs(choice) if chat else None,
    )


def _chat_logprobs(choice: dict[str, Any]) -> tuple[dict[str, Any], ...] | None:
    logprobs = choice.get("logprobs")
    return None if logprobs is None else tuple(logprobs.get("content") or ())


def graph_stream(scope: GraphScope, var: str) -> Iterator[Delta]:
    """Deltas of graph output `var` (submits what is pending), then its finish and usage."""
    for text in scope.stream(var):
        yield Delta(text)
    result = scope.result(var)
    yield Delta("", result.finish_reason, result.prompt_tokens, result.completion_tokens)


async def agraph_stream(scope: GraphScope, var: str) -> AsyncIterator[Delta]:
    async for text in scope.astream(var):
        yield Delta(text)
    result = await scope.aresult(var)
    yield Delta("", result.finish_reason, result.prompt_tokens, result.completion_tokens)
