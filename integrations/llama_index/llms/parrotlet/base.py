"""`Parrotlet`: the LlamaIndex LLM over a parrotlet server (request path step 1, the app side).

A completion, or a chat of one user message, is a one-call graph: `Call(chat=True)` sends the
text as one user message through the model's chat template. A conversation of several messages,
or a chat with tools (FunctionCallingLLM), goes to the server's OpenAI chat route. Synthesis
graphs: refine.py, tree_summarize.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    LogProb,
    MessageRole,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.response_synthesizers import BaseSynthesizer, ResponseMode
from llama_index.core.tools import BaseTool

from llama_index.llms.parrotlet import openai_routes
from llama_index.llms.parrotlet.calls import add_call
from llama_index.llms.parrotlet.openai_routes import ChatDelta, openai_messages
from parrotlet.api import Client, VariableResult
from parrotlet.engine.sampling_params import SamplingParams

SAMPLING_KWARGS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop")


class Parrotlet(FunctionCallingLLM):
    """A parrotlet server as a LlamaIndex LLM: `Parrotlet(base_url=..., api_key=...)` for a
    `parrotlet serve`, `Parrotlet(client=parrotlet.Client.in_process())` in this process, or
    `Parrotlet.in_process()` (owns its client; `close()` it).

    `is_chat_model` is False: LlamaIndex then formats its text prompts (QA, refine, summary)
    and `complete()` sends each as one user message through the chat template — a form one graph
    Call expresses, so synthesizers can chain calls on the server. Sampling defaults to greedy.
    A function-calling model: `chat_with_tools`, `predict_and_call`, agents and structured
    outputs send OpenAI tools to the server's chat route (a required call is guided to a
    valid one).
    """

    base_url: str | None = Field(
        default=None, description="URL of a `parrotlet serve` server; None when `client` is given."
    )
    api_key: str | None = Field(
        default=None, exclude=True, description="API key of the server (Bearer token), if any."
    )
    timeout: float = Field(default=60.0, gt=0, description="Seconds each HTTP request may take.")
    model: str | None = Field(
        default=None, description="Model name in `metadata`; None: the name the server reports."
    )
    context_window: int | None = Field(
        default=None,
        gt=0,
        description="Context window LlamaIndex packs prompts into; None: the server model's.",
    )
    max_tokens: int = Field(default=256, ge=0, description="Maximum tokens generated per call.")
    temperature: float = Field(default=0.0, ge=0.0, description="Sampling temperature; 0 greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(default=-1, ge=-1, description="Top-k sampling; -1 or 0 turn it off.")
    seed: int | None = Field(default=None, ge=0, description="Sampling seed (None: random).")
    stop: list[str] = Field(default_factory=list, description="Stop strings (not in the text).")
    logprobs: bool | None = Field(
        default=None,
        description="Chat responses carry each token's log-probabilities (`logprobs`, as "
        "LlamaIndex's OpenAI LLM); such chats go to the chat route.",
    )
    top_logprobs: int = Field(
        default=0, ge=0, le=20, description="With logprobs: most likely tokens listed per token."
    )

    _client: Client = PrivateAttr()
    _owns_client: bool = PrivateAttr(default=False)
    _card: dict[str, Any] | None = PrivateAttr(default=None)

    def __init__(self, *, client: Client | None = None, **fields: Any) -> None:
        super().__init__(**fields)
        if client is not None and self.base_url is not None:
            raise ValueError("Parrotlet: pass either base_url or client, not both")
        if client is None:
            if self.base_url is None:
                raise ValueError(
                    "Parrotlet needs base_url (a `parrotlet serve` URL) or client "
                    "(e.g. parrotlet.Client.in_process())"
                )
            client = Client(self.base_url, self.api_key, self.timeout)
            self._owns_client = True
        self._client = client

    @classmethod
    def in_process(cls, **fields: Any) -> Parrotlet:
        """A Parrotlet with its own in-process server (loads the default model; imports torch)."""
        client = Client.in_process()
        try:
            llm = cls(client=client, **fields)
        except BaseException:
            client.close()
            raise
        llm._owns_client = True
        return llm

    @classmethod
    def class_name(cls) -> str:
        return "Parrotlet"

    @property
    def client(self) -> Client:
        """The parrotlet Client this LLM submits graphs through."""
        return self._client

    def close(self) -> None:
        """Close the client if this LLM created it."""
        if self._owns_client:
            self._client.close()

    def response_synthesizer(
        self, response_mode: ResponseMode | str = ResponseMode.COMPACT, **kwargs: Any
    ) -> BaseSynthesizer:
        """LlamaIndex's synthesizer for `response_mode` (arguments as its
        `get_response_synthesizer`) on this LLM; `refine`, `compact` and `tree_summarize` run
        each query as one server-side graph. Use it as
        `index.as_query_engine(llm=llm, response_synthesizer=llm.response_synthesizer("refine"))`.
        """
        from llama_index.llms.parrotlet.graph_mode import get_response_synthesizer

        return get_response_synthesizer(llm=self, response_mode=response_mode, **kwargs)

    @property
    def metadata(self) -> LLMMetadata:
        if self.context_window is None or self.model is None:
            self._card = self._card or openai_routes.model_card(self._client)
        card = self._card or {}
        return LLMMetadata(
            context_window=self.context_window or card["max_model_len"],
            num_output=self.max_tokens,
            is_chat_model=False,
            is_function_calling_model=True,
            model_name=self.model or card["id"],
        )

    def sampling(self, overrides: Mapping[str, Any] | None = None) -> SamplingParams:
        """This LLM's sampling with per-call `overrides` (ValueError names an unknown one)."""
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(SAMPLING_KWARGS))
        if unknown:
            raise ValueError(
                f"Parrotlet: unsupported keyword arguments {unknown}; "
                f"supported: {list(SAMPLING_KWARGS)}"
            )
        values = {name: getattr(self, name) for name in SAMPLING_KWARGS} | overrides
        return SamplingParams(**{**values, "stop": tuple(values["stop"] or ())})

    # ---- completion: a one-call graph ----------------------------------------------------
    def _prompt(self, prompt: str, formatted: bool) -> str:
        if formatted or self.completion_to_prompt is None:
            return prompt
        return self.completion_to_prompt(prompt)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return _completion(self._generate(self._prompt(prompt, formatted), kwargs))

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        return _completion(await self._agenerate(self._prompt(prompt, formatted), kwargs))

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        return _cumulative(self._stream(self._prompt(prompt, formatted), kwargs))

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        return _acumulative(self._astream(self._prompt(prompt, formatted), kwargs))

    def _generate(self, prompt: str, kwargs: Mapping[str, Any]) -> VariableResult:
        sampling = self.sampling(kwargs)
        with self._client.session() as session:
            return add_call(session, "complete", prompt, sampling).get_result()

    async def _agenerate(self, prompt: str, kwargs: Mapping[str, Any]) -> VariableResult:
        sampling = self.sampling(kwargs)
        async with self._client.asession() as session:
            return await add_call(session, "complete", prompt, sampling).aget_result()

    def _stream(self, prompt: str, kwargs: Mapping[str, Any]) -> Iterator[str]:
        sampling = self.sampling(kwargs)
        with self._client.session() as session:
            yield from add_call(session, "complete", prompt, sampling).stream()

    async def _astream(self, prompt: str, kwargs: Mapping[str, Any]) -> AsyncIterator[str]:
        sampling = self.sampling(kwargs)
        async with self._client.asession() as session:
            async for delta in add_call(session, "complete", prompt, sampling).astream():
                yield delta

    # ---- chat: one user message is a Call; a conversation or tools go to the OpenAI route -
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        route_only = self._route_only_options(kwargs)
        single = None if route_only else _single_user_text(messages)
        if single is not None:
            return _chat_response(_completion(self._generate(single, kwargs)))
        body = openai_routes.chat(self._client, self._chat_body(messages, kwargs, route_only))
        return _route_response(body)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        route_only = self._route_only_options(kwargs)
        single = None if route_only else _single_user_text(messages)
        if single is not None:
            return _chat_response(_completion(await self._agenerate(single, kwargs)))
        body = await openai_routes.achat(
            self._client, self._chat_body(messages, kwargs, route_only)
        )
        return _route_response(body)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        route_only = self._route_only_options(kwargs)
        single = None if route_only else _single_user_text(messages)
        if single is not None:
            deltas = (ChatDelta(text) for text in self._stream(single, kwargs))
        else:
            body = self._chat_body(messages, kwargs, route_only)
            deltas = openai_routes.stream_chat(self._client, body)
        return _chat_stream(deltas)

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        route_only = self._route_only_options(kwargs)
        single = None if route_only else _single_user_text(messages)
        if single is not None:
            deltas = (ChatDelta(text) async for text in self._astream(single, kwargs))
        else:
            body = self._chat_body(messages, kwargs, route_only)
            deltas = openai_routes.astream_chat(self._client, body)
        return _achat_stream(deltas)

    def _route_only_options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The options a graph Call cannot carry, taken out of a chat's `kwargs`: tools and
        logprobs. A chat with any goes to the chat route."""
        options = _pop_tool_options(kwargs)
        if kwargs.pop("logprobs", self.logprobs):
            options["logprobs"] = True
            options["top_logprobs"] = kwargs.pop("top_logprobs", self.top_logprobs)
        return options

    def _chat_body(
        self,
        messages: Sequence[ChatMessage],
        kwargs: Mapping[str, Any],
        route_only: dict[str, Any],
    ) -> dict:
        s = self.sampling(kwargs)
        body: dict[str, Any] = {
            "messages": openai_messages(messages),
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": s.top_k,
            "stop": list(s.stop),
            **route_only,
        }
        return body if s.seed is None else {**body, "seed": s.seed}

    # ---- tools (FunctionCallingLLM): OpenAI tools on the chat route -----------------------
    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        strict: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """chat() arguments for a turn with `tools`: a required call is guided on the server
        to one valid call of a declared tool; with `strict` (OpenAI's, on every tool), calls
        the model makes on its own are guided to match their tool's schema too."""
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            user_msg = ChatMessage(role=MessageRole.USER, content=user_msg)
        if user_msg is not None:
            messages.append(user_msg)
        specs = [tool.metadata.to_openai_tool() for tool in tools]
        for spec in specs if strict else ():
            spec["function"]["strict"] = True
        choice = _tool_choice(kwargs.pop("tool_choice", None), tool_required)
        if not specs:
            return {"messages": messages, **kwargs}
        return {"messages": messages, "tools": specs, "tool_choice": choice,
                "parallel_tool_calls": allow_parallel_tool_calls, **kwargs}  # fmt: skip

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The reply's tool calls (arguments are JSON objects: the server parses them)."""
        calls = response.message.additional_kwargs.get("tool_calls") or []
        if not calls and error_on_no_tool_call:
            raise ValueError(f"expected at least one tool call, got {len(calls)}")
        return [
            ToolSelection(tool_id=call["id"], tool_name=call["function"]["name"],
                          tool_kwargs=json.loads(call["function"]["arguments"]))
            for call in calls
        ]  # fmt: skip


_TOOL_OPTIONS = ("tools", "tool_choice", "parallel_tool_calls")


def _tool_choice(choice: str | dict[str, Any] | None, required: bool) -> str | dict[str, Any]:
    """LlamaIndex's tool_choice (None, "auto" / "none" / "required", a tool's name, or
    OpenAI's dict) as OpenAI's; None follows `tool_required`."""
    if choice is None:
        return "required" if required else "auto"
    if isinstance(choice, str) and choice not in ("auto", "none", "required"):
        return {"type": "function", "function": {"name": choice}}
    return choice


def _pop_tool_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The tool fields of a chat's keyword arguments, taken out of `kwargs`."""
    return {name: kwargs.pop(name) for name in _TOOL_OPTIONS if name in kwargs}


def _single_user_text(messages: Sequence[ChatMessage]) -> str | None:
    """The text of a conversation that is one user message, else None."""
    if len(messages) != 1 or MessageRole(messages[0].role) is not MessageRole.USER:
        return None
    return openai_messages(messages)[0]["content"]


def _completion(result: VariableResult) -> CompletionResponse:
    raw = {
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
    }
    return CompletionResponse(text=result.value, raw=raw)


def _chat_response(completion: CompletionResponse) -> ChatResponse:
    message = ChatMessage(role=MessageRole.ASSISTANT, content=completion.text)
    return ChatResponse(message=message, delta=completion.delta, raw=completion.raw)


def _route_response(body: dict[str, Any]) -> ChatResponse:
    choice = body["choices"][0]
    message, logprobs = choice["message"], (choice.get("logprobs") or {}).get("content")
    calls = tuple(message.get("tool_calls") or ())
    return ChatResponse(message=_assistant(message["content"] or "", calls), raw=body,
                        logprobs=_logprobs(logprobs))  # fmt: skip


def _logprobs(entries: Sequence[dict[str, Any]] | None) -> list[list[LogProb]] | None:
    """OpenAI's logprobs content as LlamaIndex's: per token, its most likely tokens (the
    token itself when none were asked for)."""
    if not entries:
        return None
    return [[LogProb(token=t["token"], logprob=t["logprob"], bytes=t["bytes"])
             for t in entry["top_logprobs"] or [entry]] for entry in entries]  # fmt: skip


def _assistant(text: str, tool_calls: Sequence[dict[str, Any]]) -> ChatMessage:
    extra = {"tool_calls": list(tool_calls)} if tool_calls else {}
    return ChatMessage(role=MessageRole.ASSISTANT, content=text, additional_kwargs=extra)


def _cumulative(deltas: Iterator[str]) -> Iterator[CompletionResponse]:
    text = ""
    for delta in deltas:
        text += delta
        yield CompletionResponse(text=text, delta=delta)


async def _acumulative(deltas: AsyncIterator[str]) -> AsyncIterator[CompletionResponse]:
    text = ""
    async for delta in deltas:
        text += delta
        yield CompletionResponse(text=text, delta=delta)


def _chat_stream(deltas: Iterator[ChatDelta]) -> Iterator[ChatResponse]:
    """Cumulative chat responses: the text and the tool calls so far (logprobs: the delta's)."""
    text, calls = "", []
    for delta in deltas:
        text, calls = text + delta.text, calls + list(delta.tool_calls)
        yield ChatResponse(message=_assistant(text, calls), delta=delta.text,
                           logprobs=_logprobs(delta.logprobs))  # fmt: skip


async def _achat_stream(deltas: AsyncIterator[ChatDelta]) -> AsyncIterator[ChatResponse]:
    text, calls = "", []
    async for delta in deltas:
        text, calls = text + delta.text, calls + list(delta.tool_calls)
        yield ChatResponse(message=_assistant(text, calls), delta=delta.text,
                           logprobs=_logprobs(delta.logprobs))  # fmt: skip
