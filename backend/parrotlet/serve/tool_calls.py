"""Tool calling on /v1/chat/completions: a request's `tools` into the prompt, tool calls out of
the reply. openai_api.py uses it on both sides of `core.complete`; the engine only ever sees a
prompt and generates text.

Prompt side: a chat template that takes `tools` (Qwen2.5 / Qwen3 and Hermes models, Llama 3.1+,
Mistral) renders them itself; for one that does not (SmolLM2, Llama 2) the tools go into the
system message with an instruction to call them in the Hermes format, and earlier calls and
results become text in that format. `tool_choice` "required" or a named function makes the
prompt end with the opening of a call, and guides the reply (guided decoding) to one JSON call
of a declared function whose arguments match its parameters' schema. Under "auto", a tool
marked `strict` (OpenAI's guarantee that arguments match the schema) guides the reply to free
text with calls in the model's format, each call's arguments matching its schema.

The reply side, tool calls read out of the generated text, is tool_call_reader.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from parrotlet.engine.guide import Guide, json_rule

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CHOICES = ("none", "auto", "required")


@dataclass(frozen=True)
class ToolFormat:
    """How a model family writes calls: `opening`, then `{"name": ..., "<args_key>": {...}}`
    (in a JSON list with `in_list`), then `closing`."""

    opening: str
    args_key: str = "arguments"
    in_list: bool = False
    closing: str = ""


HERMES = ToolFormat("<tool_call>\n", closing="\n</tool_call>")  # Qwen2.5 / Qwen3, Hermes
LLAMA3 = ToolFormat("", "parameters")  # Llama 3.1+: a bare JSON object
MISTRAL = ToolFormat("[TOOL_CALLS] ", in_list=True)
FALLBACK = ToolFormat("<tool_call>", closing="</tool_call>")  # parrotlet's instruction, for
# templates without tools


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
    def strict(self) -> bool:
        """Whether some tool is `strict`: its calls' arguments must match its schema."""
        return any(t["function"].get("strict") is True for t in self.tools)

    @property
    def forced(self) -> str | None:
        """The function every reply calls (a named tool_choice), else None."""
        return None if self.choice in _CHOICES else self.choice


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
    is_function = isinstance(tool_choice, dict) and tool_choice.get("type") == "function"
    function = tool_choice.get("function") if is_function else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
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
    return f"{FALLBACK.opening}{json.dumps(call, ensure_ascii=False)}{FALLBACK.closing}"


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
    """The guide of the reply: when a call is required, the JSON Schema of what follows the
    opening (one call of the named function, or of any declared one, its arguments per its
    parameters); under "auto" with a strict tool, auto_guide's grammar; otherwise None."""
    if request is None:
        return None
    if request.choice == "auto":
        return auto_guide(request, fmt) if request.strict else None
    names = [request.forced] if request.forced is not None else sorted(request.names)
    call = _any_call_schema(request, names, fmt.args_key, strict_only=False)
    if fmt.in_list:
        one = {} if request.parallel else {"maxItems": 1}
        call = {"type": "array", "items": call, "minItems": 1, **one}
    return Guide.json(call)


def auto_guide(request: ToolRequest, fmt: ToolFormat) -> Guide | None:
    """A Lark grammar for an "auto" reply: text, or calls in `fmt` (text may come before, between
    and after them), whose arguments match the schema of each strict tool (any object for the
    others). Llama 3: a bare JSON call, or text that does not open with "{". None for Mistral,
    whose `[TOOL_CALLS]` is a control token that text patterns cannot match."""
    if fmt.in_list:
        return None
    call = json_rule(_any_call_schema(request, sorted(request.names), fmt.args_key, True))
    if not fmt.opening:
        text = r"TEXT: /(?s:\s*([^\s{].*)?)/"  # what is left: text not opening with "{"
        return Guide("grammar", f"start: call | TEXT\n{text}\ncall: {call}")
    calls = "(OPENING call CLOSING)+" if request.parallel else "OPENING call CLOSING"
    marker = json.dumps(fmt.opening.strip())
    return Guide("grammar", "\n".join([
        f"start: TEXT | {calls} TEXT",
        "ANY: /(?s:.*)/",
        f"TEXT: ANY & ~(ANY {marker} ANY)",  # text without the call marker
        f"OPENING: TEXT {json.dumps(fmt.opening)}",
        f"CLOSING: {json.dumps(fmt.closing)}",
        f"call: {call}",
    ]))  # fmt: skip


def _any_call_schema(
    request: ToolRequest, names: list[str], args_key: str, strict_only: bool
) -> dict[str, Any]:
    """The JSON Schema of one call of a function in `names`; with `strict_only`, the arguments
    of a tool not marked strict are any object."""
    functions = {t["function"]["name"]: t["function"] for t in request.tools}
    calls = []
    for name in names:
        function = functions[name]
        use_schema = function.get("strict") is True or not strict_only
        parameters = function.get("parameters") if use_schema else None
        calls.append(_call_schema(name, parameters, args_key))
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


def _call_schema(name: str, parameters: dict[str, Any] | None, args_key: str) -> dict[str, Any]:
    arguments = parameters or {"type": "object"}
    return {"type": "object", "properties": {"name": {"const": name}, args_key: arguments},
            "required": ["name", args_key], "additionalProperties": False}  # fmt: skip
