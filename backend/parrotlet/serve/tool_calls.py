"""Tool calling on /v1/chat/completions: a request's `tools` into the prompt, tool calls out of
the reply. openai_api.py uses it on both sides of `core.complete`; the engine only ever sees a
prompt and generates text.

Prompt side: a chat template that takes `tools` (Qwen2.5 / Qwen3 and Hermes models, Llama 3.1+,
Mistral) renders them itself; for one that does not (SmolLM2, Llama 2) the tools go into the
system message with an instruction to call them in the Hermes format, and earlier calls and
results become text in that format. `tool_choice` "required" or a named function makes the
prompt end with the opening of a call, and guides the reply (guided decoding) to one JSON call
of a declared function whose arguments match its parameters' schema.

Reply side: `ToolCallReader` takes the text as it streams and holds back what may be the start of
a call; at the end it parses the calls — Hermes `<tool_call>{...}</tool_call>` blocks, Llama 3's
bare JSON object (optionally after `<|python_tag|>`), Mistral's `[TOOL_CALLS] [...]` — each an
object with "name" and "arguments" (or "parameters"). A reply whose call text does not parse, or
names a function the request did not declare, comes back as plain content.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from parrotlet.engine.guide import Guide

# Text that opens a call in some model family's format (the parser skips them between calls).
_MARKERS = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>")
_CLOSERS = ("</tool_call>", "<|eom_id|>")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CHOICES = ("none", "auto", "required")


@dataclass(frozen=True)
class ToolFormat:
    """How a model family writes calls: `opening`, then `{"name": ..., "<args_key>": {...}}`
    (in a JSON list with `in_list`)."""

    opening: str
    args_key: str = "arguments"
    in_list: bool = False


HERMES = ToolFormat("<tool_call>\n")  # Qwen2.5 / Qwen3, Hermes
LLAMA3 = ToolFormat("", "parameters")  # Llama 3.1+: a bare JSON object
MISTRAL = ToolFormat("[TOOL_CALLS] ", in_list=True)
FALLBACK = ToolFormat("<tool_call>")  # templates without tools: parrotlet's instruction


@dataclass(frozen=True)
class ToolRequest:
    """A chat request's validated tools: the OpenAI tool objects, the choice ("auto",
    "required", or the one function the reply must call) and whether several calls may come."""

    tools: tuple[dict[str, Any], ...]
    choice: str
    parallel: bool = True

    @property
    def names(self) -> frozenset[str]:
        return frozenset(t["function"]["name"] for t in self.tools)

    @property
    def forced(self) -> str | None:
        """The function every reply calls (a named tool_choice), else None."""
        return None if self.choice in _CHOICES else self.choice


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


# ---- request ------------------------------------------------------------------------------
def tool_request(tools: Any, tool_choice: Any, parallel: Any) -> ToolRequest | None:
    """Validate OpenAI's `tools`, `tool_choice` and `parallel_tool_calls`; None when the reply
    calls no tool (no tools, or tool_choice "none"). ValueError names the offending field."""
    if tools is None:
        if tool_choice not in (None, "none"):
            raise ValueError("tool_choice needs tools")
        return None
    if not isinstance(tools, list) or not tools:
        raise ValueError("tools must be a non-empty list of function tools")
    checked = tuple(_tool(t, f"tools[{i}]") for i, t in enumerate(tools))
    names = [t["function"]["name"] for t in checked]
    if len(set(names)) < len(names):
        raise ValueError(f"tools: function names must be unique, got {names}")
    choice = _choice(tool_choice, names)
    if parallel not in (None, True, False):
        raise ValueError(f"parallel_tool_calls must be a boolean, got {parallel!r}")
    if choice == "none":
        return None
    return ToolRequest(checked, choice, parallel is not False)


def _tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise ValueError(f"{where} must be {{'type': 'function', 'function': {{...}}}}")
    unknown = sorted(set(tool) - {"type", "function"})
    if unknown:
        raise ValueError(f"{where} has unsupported fields {unknown}")
    function = tool.get("function")
    if not isinstance(function, dict):
        raise ValueError(f"{where}.function must be an object with a 'name'")
    unknown = sorted(set(function) - {"name", "description", "parameters", "strict"})
    if unknown:
        raise ValueError(f"{where}.function has unsupported fields {unknown}")
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{where}.function.name must be 1-64 of a-z A-Z 0-9 _ -, got {name!r}")
    if not isinstance(function.get("description", ""), str):
        raise ValueError(f"{where}.function.description must be a string")
    if not isinstance(function.get("parameters", {}), dict):
        raise ValueError(f"{where}.function.parameters must be a JSON Schema object")
    return {"type": "function", "function": function}


def _choice(tool_choice: Any, names: list[str]) -> str:
    if tool_choice is None:
        return "auto"
    if isinstance(tool_choice, str):
        if tool_choice not in _CHOICES:
            raise ValueError(f"tool_choice must be one of {list(_CHOICES)} or a function, "
                             f"got {tool_choice!r}")  # fmt: skip
        return tool_choice
    function = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if tool_choice.get("type") != "function" or not isinstance(name, str):  # type: ignore[union-attr]
        raise ValueError("tool_choice must be a string or {'type': 'function', 'function': "
                         "{'name': ...}}")  # fmt: skip
    if name not in names:
        raise ValueError(f"tool_choice names function {name!r}, which is not in tools {names}")
    return name


def message_calls(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """An assistant message's `tool_calls` for a chat template: arguments as objects."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        raise ValueError(f"{where}.tool_calls must be a list")
    out = []
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ValueError(f"{at} must be {{'id', 'type': 'function', 'function': {{'name', "
                             f"'arguments'}}}}")  # fmt: skip
        arguments = function.get("arguments", "{}")
        try:
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
        except json.JSONDecodeError:
            raise ValueError(f"{at}.function.arguments must be JSON text") from None
        if not isinstance(arguments, dict):
            raise ValueError(f"{at}.function.arguments must be a JSON object")
        call_id = call.get("id", f"call_{j}")
        out.append({"id": call_id, "type": "function",
                    "function": {"name": function["name"], "arguments": arguments}})  # fmt: skip
    return out


# ---- prompt -------------------------------------------------------------------------------
def template_format(chat_template: Any) -> ToolFormat | None:
    """The call format of a chat template that renders `tools`; None for one that does not."""
    if isinstance(chat_template, dict):  # named templates: transformers picks "tool_use"
        chat_template = chat_template.get("tool_use") or " ".join(chat_template.values())
    text = chat_template if isinstance(chat_template, str) else ""
    if "tools" not in text:
        return None
    if "[TOOL_CALLS]" in text:
        return MISTRAL
    if "<tool_call>" in text:
        return HERMES
    return LLAMA3 if "<|python_tag|>" in text or '"parameters"' in text else HERMES


def fallback_messages(
    messages: list[dict[str, Any]], request: ToolRequest | None
) -> list[dict[str, Any]]:
    """Messages for a template without tools: the tools as a system instruction, earlier calls
    as `<tool_call>` lines of their assistant message, results as one user message each run."""
    out: list[dict[str, Any]] = []
    results: dict[str, Any] | None = None  # the user message of the current run of results
    for message in messages:
        if message["role"] == "tool":
            result = f"<tool_response>\n{message['content']}\n</tool_response>"
            if results is None:
                results = {"role": "user", "content": result}
                out.append(results)
            else:
                results["content"] += "\n" + result
            continue
        results = None
        lines = [_call_text(c["function"]) for c in message.get("tool_calls", [])]
        text = "\n".join(filter(None, [message["content"], *lines]))
        out.append({"role": message["role"], "content": text})
    if request is not None:
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{_instruction(request)}"
        else:
            out.insert(0, {"role": "system", "content": _instruction(request)})
    return out


def _call_text(function: dict[str, Any]) -> str:
    call = {"name": function["name"], "arguments": function["arguments"]}
    return f"{FALLBACK.opening}{json.dumps(call, ensure_ascii=False)}</tool_call>"


def _instruction(request: ToolRequest) -> str:
    schemas = "\n".join(json.dumps(t, ensure_ascii=False) for t in request.tools)
    return (
        "You can call these functions (JSON Schema signatures, one per line):\n"
        f"{schemas}\n"
        "To call functions, answer with nothing but one line per call:\n"
        '<tool_call>{"name": <function name>, "arguments": <arguments object>}</tool_call>\n'
        "Otherwise answer normally."
    )


def reply_opening(request: ToolRequest | None, fmt: ToolFormat) -> str:
    """The text the reply must start with: the opening of a call when one is required."""
    if request is None or request.choice == "auto":
        return ""
    return fmt.opening


def reply_guide(request: ToolRequest | None, fmt: ToolFormat) -> Guide | None:
    """When a call is required, the JSON Schema of what follows the opening: one call of the
    named function, or of any declared one ("required"), its arguments per its parameters."""
    if request is None or request.choice == "auto":
        return None
    names = [request.forced] if request.forced is not None else sorted(request.names)
    schemas = {t["function"]["name"]: t["function"].get("parameters") for t in request.tools}
    calls = [_call_schema(name, schemas[name], fmt.args_key) for name in names]
    call = calls[0] if len(calls) == 1 else {"anyOf": calls}
    if fmt.in_list:
        one = {} if request.parallel else {"maxItems": 1}
        call = {"type": "array", "items": call, "minItems": 1, **one}
    return Guide.json(call)


def _call_schema(name: str, parameters: dict[str, Any] | None, args_key: str) -> dict[str, Any]:
    arguments = parameters or {"type": "object"}
    return {"type": "object", "properties": {"name": {"const": name}, args_key: arguments},
            "required": ["name", args_key], "additionalProperties": False}  # fmt: skip


# ---- reply --------------------------------------------------------------------------------
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
