"""OpenAI-shaped response bodies and stream chunks of the OpenAI-compatible routes
(openai_api.py), from ServeCore's completion chunks; a chat with tools has its replies split
into content and tool calls (tool_call_reader.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from parrotlet.engine.logprobs import TokenLogprob
from parrotlet.serve.openai_logprobs import LogprobFormatter
from parrotlet.serve.tool_call_reader import ToolCallReader

if TYPE_CHECKING:
    from parrotlet.serve.openai_api import _CommonRequest
    from parrotlet.serve.results import CompletionChunk
    from parrotlet.serve.tool_calls import ToolRequest


class Responder:
    """Builds OpenAI-shaped bodies and chunks for one request (one id, one `created`)."""

    def __init__(
        self,
        model: str,
        chat: bool,
        body: _CommonRequest,
        tokenizer: Any,  # spells out the tokens of logprobs
        tools: ToolRequest | None = None,
        opening: str = "",  # the call opening the prompt ended with (tool_calls.reply_opening)
    ) -> None:
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.model, self.chat, self.stream = model, chat, body.stream
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self.n = body.n or 1  # choices per prompt
        self.tools, self.opening = tools, opening
        asked = getattr(body, "logprobs", None)  # chat: true / false; completions: how many
        self.wants_logprobs = bool(asked) if chat else asked is not None
        self.logprobs = LogprobFormatter(tokenizer)
        self._readers: dict[int, ToolCallReader] = {}  # a streamed choice's tool calls
        self._held: dict[int, list[TokenLogprob]] = {}  # a streamed chat's logprobs not sent
        self._offsets: dict[int, int] = {}  # a streamed completion's text so far (text_offset)

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "choices": choices}  # fmt: skip

    def chunk(
        self,
        index: int,
        delta: dict[str, Any] | str,
        finish: str | None,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        key = "delta" if self.chat else "text"
        choice = {"index": index, key: delta, "logprobs": logprobs, "finish_reason": finish}
        body = self._envelope("chat.completion.chunk" if self.chat else "text_completion", [choice])
        if self.include_usage:
            body["usage"] = None
        return body

    def usage_chunk(self, finals: Sequence[CompletionChunk]) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._envelope(obj, []), "usage": _usage(finals, self.n)}

    def response(self, results: Sequence[CompletionChunk]) -> dict[str, Any]:
        """The body of whole completions (each chunk: a choice's text, logprobs and finish)."""
        choices = []
        for i, whole in enumerate(results):
            if self.chat:
                message, finish = self._message(whole.text, whole.finish_reason)
                content: dict[str, Any] = {"message": message}
            else:
                content, finish = {"text": whole.text}, whole.finish_reason
            logprobs = self._format(whole.logprobs) if self.wants_logprobs else None
            choices.append({"index": i, **content, "logprobs": logprobs, "finish_reason": finish})
        body = self._envelope("chat.completion" if self.chat else "text_completion", choices)
        return {**body, "usage": _usage(results, self.n)}

    def text_logprobs(self, index: int, chunk: CompletionChunk) -> dict[str, Any] | None:
        """A streamed completion chunk's logprobs (text offsets counted over the stream)."""
        if not chunk.logprobs:
            return None
        offset = self._offsets.get(index, 0)
        out = self.logprobs.completion(chunk.logprobs, offset)
        self._offsets[index] = offset + sum(len(t) for t in out["tokens"])
        return out

    def _format(self, logprobs: Sequence[TokenLogprob]) -> dict[str, Any]:
        return self.logprobs.chat(logprobs) if self.chat else self.logprobs.completion(logprobs)

    def _message(self, text: str, finish: str | None) -> tuple[dict[str, Any], str | None]:
        """A whole reply as the assistant message (its tool calls parsed) and finish reason."""
        if self.tools is None:
            return {"role": "assistant", "content": text}, finish
        reader = ToolCallReader(self.tools, self.opening)
        content = reader.feed(text)
        rest, calls = reader.finish()
        if not calls:
            return {"role": "assistant", "content": content + rest}, finish
        message = {"role": "assistant", "content": content + rest or None,
                   "tool_calls": [call.as_openai() for call in calls]}  # fmt: skip
        return message, _calls_finish(finish)

    def chat_deltas(
        self, index: int, chunk: CompletionChunk
    ) -> list[tuple[dict, str | None, dict | None]]:
        """The (delta, finish reason, logprobs) stream chunks of one engine chunk of choice
        `index`: text as it comes, except what may be a tool call, whose calls come with the
        finish; logprobs with the first chunk sent from here on (held while text is held)."""
        deltas = self._chat_deltas(index, chunk)
        held = self._held.setdefault(index, [])
        held += chunk.logprobs
        if not deltas or not held:
            return [(delta, finish, None) for delta, finish in deltas]
        logprobs = self.logprobs.chat(held)
        held.clear()
        (delta, finish), *rest = deltas
        return [(delta, finish, logprobs), *((d, f, None) for d, f in rest)]

    def _chat_deltas(self, index: int, chunk: CompletionChunk) -> list[tuple[dict, str | None]]:
        if self.tools is None:
            if not chunk.text and chunk.finish_reason is None:
                return []
            return [({"content": chunk.text} if chunk.text else {}, chunk.finish_reason)]
        reader = self._readers.setdefault(index, ToolCallReader(self.tools, self.opening))
        text = reader.feed(chunk.text)
        if chunk.finish_reason is None:
            return [({"content": text}, None)] if text else []
        rest, calls = reader.finish()
        text += rest
        out: list[tuple[dict, str | None]] = [({"content": text}, None)] if text else []
        if not calls:
            return [*out, ({}, chunk.finish_reason)]
        deltas = [call.as_openai(k) for k, call in enumerate(calls)]
        return [*out, ({"tool_calls": deltas}, _calls_finish(chunk.finish_reason))]


def _calls_finish(finish: str | None) -> str | None:
    """OpenAI's finish reason of a reply that called tools (a cut-off one stays "length")."""
    return "tool_calls" if finish == "stop" else finish


def _usage(finals: Sequence[CompletionChunk], n: int) -> dict[str, int]:
    """Token counts of the choices in index order (n a prompt): each prompt counted once."""
    prompt = sum(f.prompt_tokens for f in finals[::n])
    completion = sum(f.completion_tokens for f in finals)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}  # fmt: skip
