"""Tool calls read out of a reply on /v1/chat/completions (openai_api.py, after `core.complete`;
tool_calls.py puts the tools into the prompt). `ToolCallReader` takes the text as it streams and
holds back what may be the start of a call; at the end it parses the calls — Hermes
`<tool_call>{...}</tool_call>` blocks, Llama 3's bare JSON object (optionally after
`<|python_tag|>`), Mistral's `[TOOL_CALLS] [...]` — each an object with "name" and "arguments"
(or "parameters"). A reply whose call text does not parse, or names a function the request did
not declare, comes back as plain content.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from parrotlet.serve.tool_calls import ToolRequest

# Text that opens a call in some model family's format (the parser skips them between calls).
_MARKERS = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>")
_CLOSERS = ("</tool_call>", "<|eom_id|>")


@dataclass(frozen=True)
class ToolCall:
    """One call of the reply: OpenAI's `{"id", "type": "function", "function": {...}}`."""

    name: str
    arguments: str  # JSON text (OpenAI: the model's text, which may not be valid JSON)
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:24])

    def as_openai(self, index: int | None = None) -> dict[str, Any]:
        call = {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}  # fmt: skip
        return call if index is None else {"index": index, **call}


class ToolCallReader:
    """Splits one reply into content and tool calls, streaming: `feed` returns the content
    that can be sent now (never the start of a call), `finish` the rest and the calls."""

    def __init__(self, request: ToolRequest, opening: str = "") -> None:
        self.request = request
        self._held = opening  # text not yet returned as content (the call opening the prompt
        # ended with, reply_opening, comes first)
        self._in_call = bool(opening)
        self._sent_any = False  # content returned so far (a bare JSON call starts a reply)

    def feed(self, text: str) -> str:
        self._held += text
        if self._in_call:
            return ""
        start = _call_start(self._held, at_reply_start=not self._sent_any)
        if start is not None:
            self._in_call = True
            before, self._held = self._held[:start], self._held[start:]
            return before if self._sent_any or before.strip() else ""
        end = len(self._held) - _partial_marker(self._held)
        if not self._sent_any and not self._held[:end].strip():
            return ""  # only whitespace so far: a bare JSON call may still open the reply
        out, self._held = self._held[:end], self._held[end:]
        self._sent_any = True
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(content not returned yet, the calls); content only when the calls do not parse."""
        held, self._held = self._held, ""
        if not self._in_call:
            return held, []
        parsed = _parse_calls(held, self.request.names)
        if parsed is None:
            return held, []
        calls, rest = parsed
        return rest, calls if self.request.parallel else calls[:1]


def _call_start(text: str, at_reply_start: bool) -> int | None:
    """Where a call begins in `text`: a marker, or a JSON object opening the reply."""
    found = [i for i in (text.find(m) for m in _MARKERS) if i >= 0]
    if at_reply_start:
        stripped = text.lstrip()
        if stripped.startswith("{"):
            found.append(len(text) - len(stripped))
    return min(found) if found else None


def _partial_marker(text: str) -> int:
    """How many characters at the end of `text` may begin a marker (held back until known)."""
    for size in range(min(len(text), max(map(len, _MARKERS)) - 1), 0, -1):
        if any(m.startswith(text[-size:]) for m in _MARKERS):
            return size
    return 0


def _parse_calls(text: str, names: frozenset[str]) -> tuple[list[ToolCall], str] | None:
    """The calls `text` (from a call's start) holds and any text after them; None unless it is
    one or more calls of declared functions."""
    decoder, calls, pos = json.JSONDecoder(), [], 0
    while True:
        pos = _skip_separators(text, pos)
        if pos >= len(text) or text[pos] not in "{[":
            break
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
        for item in value if isinstance(value, list) else [value]:
            call = _call_of(item, names)
            if call is None:
                return None
            calls.append(call)
    return (calls, text[pos:].strip()) if calls else None


def _skip_separators(text: str, pos: int) -> int:
    while pos < len(text):
        if text[pos] in " \t\r\n,;":
            pos += 1
            continue
        tag = next((t for t in (*_MARKERS, *_CLOSERS) if text.startswith(t, pos)), None)
        if tag is None:
            return pos
        pos += len(tag)
    return pos


def _call_of(item: Any, names: frozenset[str]) -> ToolCall | None:
    if not isinstance(item, dict) or item.get("name") not in names:
        return None
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(item["name"], json.dumps(arguments, ensure_ascii=False))
