"""OpenAI-compatible routes (/v1/completions, /v1/chat/completions, /v1/models) over ServeCore.

Each prompt becomes one `core.complete` call (a one-call graph in a throwaway session); the
request's OpenAI parameters become SamplingParams (with a Guide for structured outputs and
required tool calls: structured_output.py, tool_calls.py), the chunks become OpenAI-shaped
bodies (openai_responses.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from parrotlet.engine.guide import Guide
from parrotlet.engine.logprobs import MAX_LOGPROBS
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.serve.auth import request_tenant
from parrotlet.serve.errors import NotFoundError
from parrotlet.serve.openai_responses import Responder
from parrotlet.serve.structured_output import request_guide
from parrotlet.serve.tool_calls import (
    FALLBACK,
    ToolFormat,
    ToolRequest,
    fallback_messages,
    message_calls,
    reply_guide,
    reply_opening,
    template_format,
    tool_request,
)
from parrotlet.serve.wire import sse_response

if TYPE_CHECKING:
    from parrotlet.serve.core import ServeCore
    from parrotlet.serve.results import CompletionChunk

router = APIRouter()
_STARTED = int(time.time())
_ROLES = ("system", "developer", "user", "assistant", "tool")
_ROLE_FIELDS = {"assistant": {"tool_calls"}, "tool": {"tool_call_id"}}  # besides role, content
MAX_CHOICES = 16  # `n`: completions of one prompt (they share its prefix in the KV cache)
# Known OpenAI parameters accepted only at their default (values that change nothing).
_ONLY_DEFAULT: dict[str, tuple[Any, ...]] = {
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None,),
}


class ModelNotFoundError(NotFoundError):
    """A request named a model this server does not serve (OpenAI's code: model_not_found)."""

    code = "model_not_found"


# ---- request bodies ------------------------------------------------------------------------
class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class _CommonRequest(BaseModel):
    """Fields shared by both endpoints; `stop` is checked by SamplingParams (clearer errors)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stream: bool = False
    stream_options: _Options | None = None
    stop: Any = None
    seed: int | None = None
    user: str | None = None
    top_k: int | None = None  # vLLM extension
    ignore_eos: bool = False  # vLLM extension
    stop_token_ids: list[int] | None = None  # vLLM extension
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None  # vLLM extension
    min_tokens: int | None = None  # vLLM extension
    logit_bias: dict[str, float] | None = None
    response_format: Any = None  # checked by structured_output.request_guide
    structured_outputs: Any = None  # vLLM extension


class CompletionRequest(_CommonRequest):
    prompt: Any
    logprobs: int | None = None
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None


class ChatRequest(_CommonRequest):
    messages: list[Any]
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: Any = None  # checked by tool_calls.tool_request (clearer errors)
    tool_choice: Any = None
    parallel_tool_calls: Any = None


# ---- routes --------------------------------------------------------------------------------
@router.post("/v1/completions")
async def completions(
    body: CompletionRequest, request: Request, tenant: str = Depends(request_tenant)
) -> Any:
    core = _core(request)
    _check_common(core, body)
    prompts = _prompts(body.prompt, len(core.tokenizer))
    guide = request_guide(body.response_format, body.structured_outputs)
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    params = _sampling(body, max_tokens, guide, body.logprobs)
    out = Responder(core.model_name, False, body, core.tokenizer)
    return await _respond(core, tenant, prompts, params, out)


@router.post("/v1/chat/completions")
async def chat_completions(
    body: ChatRequest, request: Request, tenant: str = Depends(request_tenant)
) -> Any:
    core = _core(request)
    _check_common(core, body)
    tools = tool_request(body.tools, body.tool_choice, body.parallel_tool_calls)
    prompt, fmt = _chat_prompt(core.tokenizer, body.messages, tools)
    opening, guide = reply_opening(tools, fmt), reply_guide(tools, fmt)
    output_guide = request_guide(body.response_format, body.structured_outputs)
    if guide is not None and output_guide is not None:
        raise ValueError("guided tool calls (tool_choice 'required' or a function, or strict "
                         "tools) and response_format / structured_outputs both constrain the "
                         "reply")  # fmt: skip
    max_tokens = body.max_completion_tokens
    if max_tokens is None:
        max_tokens = body.max_tokens
    to_the_end = max_tokens is None  # OpenAI: up to the context, clipped to what is left
    params = _sampling(body, core.max_model_len if to_the_end else max_tokens,
                       guide or output_guide, _chat_logprobs(body))  # fmt: skip
    prompt += opening
    out = Responder(core.model_name, True, body, core.tokenizer, tools, opening)
    return await _respond(core, tenant, [prompt], params, out, clip_to_context=to_the_end)


@router.get("/v1/models")
async def models(request: Request, tenant: str = Depends(request_tenant)) -> dict[str, Any]:
    core = _core(request)
    card = {"id": core.model_name, "object": "model", "created": _STARTED, "owned_by": "parrotlet",
            "max_model_len": core.max_model_len}  # fmt: skip
    return {"object": "list", "data": [card]}


def _core(request: Request) -> ServeCore:
    return request.app.state.core


# ---- request → core ------------------------------------------------------------------------
def _check_common(core: ServeCore, body: _CommonRequest) -> None:
    if body.model is not None and body.model != core.model_name:
        raise ModelNotFoundError(f"The model `{body.model}` does not exist")
    if body.n is not None and not 1 <= body.n <= MAX_CHOICES:
        raise ValueError(f"n must be in [1, {MAX_CHOICES}] (choices per prompt), got {body.n}")
    for name in sorted(body.model_fields_set & _ONLY_DEFAULT.keys()):
        if getattr(body, name) not in _ONLY_DEFAULT[name]:
            raise ValueError(f"{name} is not supported (only its default is accepted)")
    _check_logit_bias(body.logit_bias, len(core.tokenizer))


def _chat_logprobs(body: ChatRequest) -> int | None:
    """How many most likely tokens a chat asks to list per token (None: no logprobs)."""
    if body.top_logprobs is not None and not body.logprobs:
        raise ValueError("top_logprobs needs logprobs: true")
    if body.top_logprobs is not None and not 0 <= body.top_logprobs <= MAX_LOGPROBS:
        raise ValueError(f"top_logprobs must be in [0, {MAX_LOGPROBS}], got {body.top_logprobs}")
    if not body.logprobs:
        return None
    return body.top_logprobs or 0


def _sampling(
    body: _CommonRequest, max_tokens: int, guide: Guide | None, logprobs: int | None
) -> SamplingParams:
    """OpenAI parameters → SamplingParams; its ValueError names the offending field."""
    return SamplingParams(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=-1 if body.top_k is None else body.top_k,
        seed=body.seed,
        max_tokens=max_tokens,
        stop=() if body.stop is None else body.stop,
        stop_token_ids=tuple(body.stop_token_ids or ()),
        ignore_eos=body.ignore_eos,
        guide=guide,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
        logprobs=logprobs,
        logit_bias=_logit_bias(body.logit_bias),
        min_tokens=body.min_tokens or 0,
    )


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float]:
    """OpenAI's logit_bias (token ids as JSON keys, checked by _check_common) with int keys."""
    return {int(key): value for key, value in (bias or {}).items()}


def _check_logit_bias(bias: dict[str, float] | None, vocab_size: int) -> None:
    keys = list(bias or {})
    bad = [key for key in keys if not (key.isascii() and key.isdigit())]
    if bad:
        raise ValueError(f"logit_bias keys must be token ids, got {bad[0]!r}")
    outside = [int(key) for key in keys if int(key) >= vocab_size]
    if outside:
        raise ValueError(f"logit_bias has token ids outside [0, {vocab_size}): {outside[:5]}")


def _prompts(prompt: Any, vocab_size: int) -> list[str | list[int]]:
    """A prompt (text or token ids) or a batch of them, as a list of single prompts."""
    if isinstance(prompt, str) or (isinstance(prompt, list) and _all_ints(prompt)):
        batch = [prompt]
    elif isinstance(prompt, list) and prompt:
        batch = list(prompt)
    else:
        raise ValueError("prompt must be a string, a list of token ids, or a list of those")
    for i, p in enumerate(batch):
        where = "prompt" if len(batch) == 1 else f"prompt[{i}]"
        if not isinstance(p, str) and not (isinstance(p, list) and _all_ints(p)):
            raise ValueError(f"{where} must be a string or a list of token ids")
        if not p:
            raise ValueError(f"{where} must not be empty")
        bad = [t for t in p if not 0 <= t < vocab_size] if isinstance(p, list) else []
        if bad:
            raise ValueError(f"{where} has token ids outside [0, {vocab_size}): {bad[:5]}")
    return batch


def _all_ints(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(t, int) and not isinstance(t, bool) for t in items)


def _chat_prompt(
    tokenizer: Any, messages: list[Any], tools: ToolRequest | None
) -> tuple[str, ToolFormat]:
    """The prompt text of `messages` (and `tools`) under the model's chat template, ready for
    the reply, and the format the reply writes tool calls in."""
    if not messages:
        raise ValueError("messages must be a non-empty list")
    clean = [_message(m, f"messages[{i}]") for i, m in enumerate(messages)]
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this model has no chat template; use /v1/completions")
    fmt, extra = template_format(tokenizer.chat_template), {}
    if fmt is None:  # the template knows no tools: parrotlet's instruction and call format
        fmt, clean = FALLBACK, fallback_messages(clean, tools)
    elif tools is not None:
        extra["tools"] = list(tools.tools)
    try:
        text = tokenizer.apply_chat_template(
            clean, add_generation_prompt=True, tokenize=False, **extra
        )
    except Exception as exc:  # a Jinja template error: the messages do not fit the template
        raise ValueError(f"messages: the model's chat template rejected them: {exc}") from None
    return text, fmt


def _message(message: Any, where: str) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise ValueError(f"{where} must be an object with 'role' and 'content'")
    role = message.get("role")
    if role not in _ROLES:
        raise ValueError(f"{where}.role must be one of {list(_ROLES)}, got {role!r}")
    allowed = {"role", "content", "name"} | _ROLE_FIELDS.get(role, set())
    unknown = sorted(set(message) - allowed)
    if unknown:
        raise ValueError(f"{where} has unsupported fields {unknown}")
    content = message.get("content")
    if content is None and message.get("tool_calls"):
        content = ""  # an assistant message of tool calls only
    if isinstance(content, list):
        content = "".join(_text_part(p, f"{where}.content[{j}]") for j, p in enumerate(content))
    if not isinstance(content, str):
        raise ValueError(f"{where}.content must be a string or a list of text parts")
    clean: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": content}
    if message.get("tool_calls"):
        clean["tool_calls"] = message_calls(message, where)
    if role == "tool" and isinstance(message.get("tool_call_id"), str):
        clean["tool_call_id"] = message["tool_call_id"]
    return clean


def _text_part(part: Any, where: str) -> str:
    if (
        not isinstance(part, dict)
        or part.get("type") != "text"
        or not isinstance(part.get("text"), str)
    ):
        raise ValueError(f"{where} must be {{'type': 'text', 'text': str}} (text only)")
    return part["text"]


# ---- core → response -----------------------------------------------------------------------
async def _respond(
    core: ServeCore,
    tenant: str,
    prompts: list[str | list[int]],
    params: SamplingParams,
    out: Responder,
    *,
    clip_to_context: bool = False,
) -> Any:
    """Run `out.n` choices of each prompt (choice i * n + j: prompt i's j-th) and answer."""
    choices = [(p, _choice_params(params, j)) for p in prompts for j in range(out.n)]
    streams = await _open(core, tenant, choices, clip_to_context)
    if out.stream:
        return sse_response(_stream_events(streams, out))
    results = [await _collect(s) for s in streams]  # all run concurrently in the engine
    return JSONResponse(out.response(results))


def _choice_params(params: SamplingParams, j: int) -> SamplingParams:
    """Choice j's sampling: a seeded request's choices draw from seeds seed, seed + 1, ..."""
    if j == 0 or params.seed is None:
        return params
    return dataclasses.replace(params, seed=(params.seed + j) % 2**64)


async def _open(
    core: ServeCore,
    tenant: str,
    choices: list[tuple[str | list[int], SamplingParams]],
    clip_to_context: bool,
) -> list[AsyncIterator[CompletionChunk]]:
    """Start one completion per choice and wait for each first chunk, so that a bad request
    fails with its status code before a streamed response has started."""
    streams = [core.complete(tenant, p, params, clip_to_context=clip_to_context)
               for p, params in choices]  # fmt: skip
    firsts = await asyncio.gather(*(anext(s) for s in streams), return_exceptions=True)
    failed = [f for f in firsts if isinstance(f, BaseException)]
    if failed:
        for s in streams:
            await s.aclose()
        raise failed[0]
    return [_prepend(first, s) for first, s in zip(firsts, streams, strict=True)]


async def _prepend(
    first: CompletionChunk, rest: AsyncIterator[CompletionChunk]
) -> AsyncIterator[CompletionChunk]:
    try:
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()


async def _collect(stream: AsyncIterator[CompletionChunk]) -> CompletionChunk:
    """The whole completion: the last chunk with every chunk's text and logprobs."""
    parts, logprobs = [], []
    async for chunk in stream:
        parts.append(chunk.text)
        logprobs += chunk.logprobs
    return dataclasses.replace(chunk, text="".join(parts), logprobs=tuple(logprobs))


async def _stream_events(
    streams: list[AsyncIterator[CompletionChunk]], out: Responder
) -> AsyncIterator[dict[str, Any]]:
    finals: dict[int, CompletionChunk] = {}
    if out.chat:
        for i in range(len(streams)):
            yield out.chunk(i, {"role": "assistant", "content": ""}, None)
    async for i, chunk in _merge(streams):
        if out.chat:
            for delta, finish, logprobs in out.chat_deltas(i, chunk):
                yield out.chunk(i, delta, finish, logprobs)
        elif chunk.text or chunk.finish_reason is not None or chunk.logprobs:
            yield out.chunk(i, chunk.text, chunk.finish_reason, out.text_logprobs(i, chunk))
        if chunk.finish_reason is not None:
            finals[i] = chunk
    if out.include_usage:
        yield out.usage_chunk([finals[i] for i in sorted(finals)])


async def _merge(
    streams: list[AsyncIterator[CompletionChunk]],
) -> AsyncIterator[tuple[int, CompletionChunk]]:
    """Chunks of several streams as they come, tagged with the stream's index."""
    queue: asyncio.Queue[tuple[int, CompletionChunk | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[CompletionChunk]) -> None:
        try:
            async for chunk in stream:
                queue.put_nowait((i, chunk))
        except Exception as exc:
            queue.put_nowait((i, exc))
        queue.put_nowait((i, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            i, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
