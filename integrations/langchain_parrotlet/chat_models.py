"""ChatParrotlet: LangChain's chat-model interface to a parrotlet server — the adapter step of the
request path. A plain invoke is one `/v1/chat/completions` request (the server applies the model's
chat template); a batch is one graph; inside a graph scope a prompt of text messages (system,
human, ai) becomes a graph call (`Call(chat=True)`, with Role segments for several messages)
whose reply is a SemanticText future.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import InvalidToolCall, ToolCall, tool_call_chunk
from langchain_core.output_parsers.openai_tools import make_invalid_tool_call, parse_tool_call
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from langchain_parrotlet import routes
from langchain_parrotlet.futures import SemanticText, parts_of
from langchain_parrotlet.params import ParrotletParams, usage_of
from langchain_parrotlet.scope import GraphScope
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.graph.ir import CHAT_ROLES

__all__ = ["ChatParrotlet", "SemanticAIMessage"]


class SemanticAIMessage(AIMessage):
    """A reply inside a graph scope: `content` (and `text`) is a SemanticText future.

    Built without validation, which would copy the future into a plain str; token usage is
    unknown until it is resolved (`batch` outside a scope returns plain AIMessages with usage).
    """

    @property
    def text(self) -> SemanticText:  # type: ignore[override]
        return self.content  # type: ignore[return-value]

    @classmethod
    def of(cls, future: SemanticText) -> SemanticAIMessage:
        return cls.model_construct(content=future)


class ChatParrotlet(ParrotletParams, BaseChatModel):
    """A parrotlet-served model as a LangChain chat model.

    Example:
        ```python
        import parrotlet
        from langchain_parrotlet import ChatParrotlet, parrotlet_graph

        chat = ChatParrotlet(client=parrotlet.Client.in_process(), temperature=0)
        chat.invoke("Hello")  # one /v1/chat/completions request
        chat.batch(["Hi", "Name a color"])  # one graph, one submit
        with parrotlet_graph(chat):  # chains become one server-side graph
            ...
        ```

    Which path a prompt takes (chosen by the prompt, never by the caller):
    - text messages of roles system / human / ai (e.g. a system prompt and a question): a graph
      call with `chat=True` (Role segments per message) inside a graph scope or a batch, else
      one `/v1/chat/completions` request; both render the same chat template on the server;
    - tool messages, tool calls or non-text blocks, and calls with tools bound
      (`bind_tools`) or `logprobs`: `/v1/chat/completions`, one request per prompt, with
      references resolved first.
    """

    logprobs: bool | None = None
    """Return each generated token's log-probability (`response_metadata["logprobs"]`, as
    ChatOpenAI); such calls run eagerly, also inside a graph scope."""

    top_logprobs: int | None = None
    """With `logprobs`, also list this many most likely tokens per position (0-20)."""

    @property
    def _llm_type(self) -> str:
        return "parrotlet-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self.identifying_fields()

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return LangSmithParams(**self.ls_fields("chat", stop, **kwargs))  # type: ignore[typeddict-item]

    # ---- one prompt ----------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        route_only = self._route_only_options(kwargs)
        sampling = self.sampling_params(stop, kwargs)
        connection = self.connection()
        scope = None if route_only else self.graph_scope()  # tools, logprobs: eager
        future = _graph_call(scope, messages, sampling)
        if future is not None:
            return ChatResult(generations=[ChatGeneration(message=SemanticAIMessage.of(future))])
        dicts = routes.message_dicts(messages)
        body = routes.chat_request(dicts, {**self.openai_body(sampling, kwargs), **route_only})
        return _chat_result(
            routes.complete(connection, routes.CHAT, body), self.served_model_name()
        )

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        route_only = self._route_only_options(kwargs)
        sampling = self.sampling_params(stop, kwargs)
        connection = self.connection()
        scope = None if route_only else self.graph_scope()
        future = _graph_call(scope, messages, sampling)
        if future is not None:
            return ChatResult(generations=[ChatGeneration(message=SemanticAIMessage.of(future))])
        dicts = await routes.amessage_dicts(messages)
        body = routes.chat_request(dicts, {**self.openai_body(sampling, kwargs), **route_only})
        delta = await routes.acomplete(connection, routes.CHAT, body)
        return _chat_result(delta, self.served_model_name())

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        route_only = self._route_only_options(kwargs)
        sampling = self.sampling_params(stop, kwargs)
        connection = self.connection()
        model_name = self.served_model_name()
        scope = None if route_only else self.graph_scope()
        future = _graph_call(scope, messages, sampling)
        if scope is not None and future is not None:
            (ref,) = future.parts
            deltas: Iterator[routes.Delta] = routes.graph_stream(scope, ref.var)  # type: ignore[union-attr]
        else:
            dicts = routes.message_dicts(messages)
            body = routes.chat_request(dicts, {**self.openai_body(sampling, kwargs), **route_only})
            deltas = routes.stream(connection, routes.CHAT, body)
        for delta in deltas:
            chunk = _chunk(delta, model_name)
            if run_manager is not None and delta.text:
                run_manager.on_llm_new_token(delta.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        route_only = self._route_only_options(kwargs)
        sampling = self.sampling_params(stop, kwargs)
        connection = self.connection()
        model_name = self.served_model_name()
        scope = None if route_only else self.graph_scope()
        future = _graph_call(scope, messages, sampling)
        if scope is not None and future is not None:
            (ref,) = future.parts
            deltas: AsyncIterator[routes.Delta] = routes.agraph_stream(scope, ref.var)  # type: ignore[union-attr]
        else:
            dicts = await routes.amessage_dicts(messages)
            body = routes.chat_request(dicts, {**self.openai_body(sampling, kwargs), **route_only})
            deltas = routes.astream(connection, routes.CHAT, body)
        async for delta in deltas:
            chunk = _chunk(delta, model_name)
            if run_manager is not None and delta.text:
                await run_manager.on_llm_new_token(delta.text, chunk=chunk)
            yield chunk

    def _route_only_options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The options a graph call cannot carry, taken out of a call's `kwargs`: bound tools
        (Python reads the calls) and logprobs. A call with any runs as a chat request."""
        options = _pop_tool_options(kwargs)
        logprobs = kwargs.pop("logprobs", self.logprobs)
        top = kwargs.pop("top_logprobs", self.top_logprobs)
        if logprobs:
            options["logprobs"] = True
            if top is not None:
                options["top_logprobs"] = top
        return options

    # ---- tools ---------------------------------------------------------------------------
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: dict[str, Any] | str | bool | None = None,
        parallel_tool_calls: bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """The model with `tools` (anything `convert_to_openai_tool` takes) sent along with each
        call; replies carry `tool_calls` (and `invalid_tool_calls` for arguments that are not a
        JSON object). Such calls run eagerly, also inside a graph scope: Python reads the calls.

        Args:
            tools: the tools the model may call.
            tool_choice: "auto" (the default), "none", "required" or "any" (some tool), a tool's
                name or True (the only tool): the reply calls it.
            parallel_tool_calls: False keeps one call a reply.
            strict: OpenAI's `strict` on each function: under "auto" the server guides the
                reply so that calls' arguments match their schema (a required call's
                arguments are guided to it either way).
            **kwargs: bound as well (call options such as `temperature`).
        """
        bound: dict[str, Any] = {"tools": [convert_to_openai_tool(t, strict=strict) for t in tools]}
        choice = _tool_choice(tool_choice, bound["tools"])
        if choice is not None:
            bound["tool_choice"] = choice
        if parallel_tool_calls is not None:
            bound["parallel_tool_calls"] = parallel_tool_calls
        return super().bind(**bound, **kwargs)

    # ---- batches: one graph --------------------------------------------------------------
    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """All prompts as ONE graph (one submit), unless a graph scope is already open or an
        LLM cache applies (ParrotletParams.batch_as_graph)."""
        if not self.batch_as_graph(len(inputs)):
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        with GraphScope(self.connection(), raise_on_exit=False) as private:
            outputs = super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        return [_settled(o, private, self.served_model_name(), return_exceptions) for o in outputs]

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        if not self.batch_as_graph(len(inputs)):
            return await super().abatch(
                inputs, config, return_exceptions=return_exceptions, **kwargs
            )
        async with GraphScope(self.connection(), raise_on_exit=False) as private:
            outputs = await super().abatch(
                inputs, config, return_exceptions=return_exceptions, **kwargs
            )
        return [_settled(o, private, self.served_model_name(), return_exceptions) for o in outputs]


def _graph_call(
    scope: GraphScope | None, messages: Sequence[BaseMessage], sampling: SamplingParams
) -> SemanticText | None:
    """Add `messages` to `scope` as one chat call and return its future; None (the eager
    route) outside a scope or for a prompt a graph call cannot carry. One human message is a
    plain chat call; other text messages of roles system/user/assistant become Role segments."""
    if scope is None:
        return None
    texts = _chat_texts(messages)
    if texts is None:
        return None
    if len(texts) == 1 and texts[0][0] == "user":
        return scope.add_call(parts_of(texts[0][1]), sampling, chat=True)
    return scope.add_chat_call([(role, parts_of(text)) for role, text in texts], sampling)


_TOOL_OPTIONS = ("tools", "tool_choice", "parallel_tool_calls")


def _pop_tool_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The tool fields of a call's options (bind_tools'), taken out of `kwargs`."""
    return {name: kwargs.pop(name) for name in _TOOL_OPTIONS if name in kwargs}


def _tool_choice(choice: dict[str, Any] | str | bool | None, tools: list[dict[str, Any]]) -> Any:
    """LangChain's tool_choice as OpenAI's: None, "auto", "none", "required", or a function."""
    if choice is None or choice is False:
        return None
    if choice == "any":
        return "required"
    if choice in ("auto", "none", "required") or isinstance(choice, dict):
        return choice
    if choice is True:
        if len(tools) != 1:
            raise ValueError(f"tool_choice=True needs exactly one tool, got {len(tools)}")
        choice = tools[0]["function"]["name"]
    if not isinstance(choice, str):
        raise ValueError(f"tool_choice must be a string, a dict or a bool, got {choice!r}")
    return {"type": "function", "function": {"name": choice}}


def _chat_texts(messages: Sequence[BaseMessage]) -> list[tuple[str, str]] | None:
    """(role, text) of each message, or None where one is not a plain text message of a chat
    role (tool messages and calls, non-text blocks, other roles)."""
    texts = []
    for message in messages:
        role = _GRAPH_ROLES.get(message.type)
        if message.type == "chat":
            role = getattr(message, "role", None)
        if role not in CHAT_ROLES or getattr(message, "tool_calls", None):
            return None
        try:
            texts.append((role, routes.message_text(message)))
        except ValueError:
            return None
    return texts or None


_GRAPH_ROLES = {"human": "user", "ai": "assistant", "system": "system"}


def _settled(output: Any, scope: GraphScope, model_name: str | None, keep_errors: bool) -> Any:
    """A batch output with its future replaced by the real reply (an AIMessage with usage)."""
    if not isinstance(output, SemanticAIMessage):
        return output
    (ref,) = output.content.parts  # type: ignore[union-attr]
    try:
        result = scope.result(ref.var)  # type: ignore[union-attr]
    except Exception as exc:
        if keep_errors:
            return exc
        raise
    delta = routes.Delta(
        result.value, result.finish_reason, result.prompt_tokens, result.completion_tokens
    )
    message = _message(delta, model_name)
    message.id = output.id
    return message


def _message(delta: routes.Delta, model_name: str | None) -> AIMessage:
    calls, invalid = _tool_calls(delta.tool_calls)
    metadata = {"finish_reason": delta.finish_reason, "model_name": model_name}
    if delta.logprobs is not None:
        metadata["logprobs"] = {"content": list(delta.logprobs)}
    return AIMessage(
        content=delta.text,
        tool_calls=calls,
        invalid_tool_calls=invalid,
        response_metadata=metadata,
        usage_metadata=usage_of(delta.prompt_tokens, delta.completion_tokens),  # type: ignore[arg-type]
    )


def _tool_calls(raw: Sequence[dict[str, Any]]) -> tuple[list[ToolCall], list[InvalidToolCall]]:
    """A reply's OpenAI tool calls as LangChain's: parsed, or invalid with the parse error."""
    calls, invalid = [], []
    for call in raw:
        try:
            parsed = parse_tool_call(call, return_id=True)
        except OutputParserException as exc:
            invalid.append(make_invalid_tool_call(call, str(exc)))
        else:
            if parsed is not None:
                calls.append(parsed)
    return calls, invalid  # type: ignore[return-value]


def _chat_result(delta: routes.Delta, model_name: str | None) -> ChatResult:
    usage = usage_of(delta.prompt_tokens, delta.completion_tokens)
    return ChatResult(
        generations=[ChatGeneration(message=_message(delta, model_name))],
        llm_output={"token_usage": usage, "model_name": model_name},
    )


def _chunk(delta: routes.Delta, model_name: str) -> ChatGenerationChunk:
    info = None if delta.logprobs is None else {"logprobs": {"content": list(delta.logprobs)}}
    if delta.finish_reason is None and not delta.completion_tokens:
        calls = [
            tool_call_chunk(name=c["function"].get("name"), args=c["function"].get("arguments"),
                            id=c.get("id"), index=c.get("index"))
            for c in delta.tool_calls
        ]  # fmt: skip
        message = AIMessageChunk(content=delta.text, tool_call_chunks=calls)
        return ChatGenerationChunk(message=message, generation_info=info)
    message = AIMessageChunk(
        content=delta.text,
        response_metadata={"finish_reason": delta.finish_reason, "model_name": model_name},
        usage_metadata=usage_of(delta.prompt_tokens, delta.completion_tokens),  # type: ignore[arg-type]
        chunk_position="last",
    )
    return ChatGenerationChunk(message=message)
