"""ChatParrotlet: LangChain's chat-model interface to a parrotlet server — the adapter step of the
request path. A plain invoke is one `/v1/chat/completions` request (the server applies the model's
chat template); a batch is one graph; inside a graph scope a one-user-message prompt becomes a
graph call (`Call(chat=True)`) whose reply is a SemanticText future.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig

from langchain_parrotlet import routes
from langchain_parrotlet.futures import SemanticText, parts_of
from langchain_parrotlet.params import ParrotletParams, usage_of
from langchain_parrotlet.scope import GraphScope, active_scope

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
    - one human message: a graph call with `chat=True` inside a graph scope or a batch, else one
      `/v1/chat/completions` request; both render the same chat template on the server;
    - several messages (system, history, tool results): `/v1/chat/completions`, one request per
      prompt, with references resolved first — the graph IR has one user message per call.
    """

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
        sampling = self.sampling_params(stop, kwargs)
        connection = self.connection()
        scope = active_scope(connection)
        content = _single_user_text(messages)
        if scope is not None and content is not None:
            future = scope.add_call(parts_of(content), sampling, chat=True)
            return ChatResult(generations=[ChatGeneration(message=SemanticAIMessage.of(future))])
        dicts = routes.message_dicts(messages)
        body = routes.chat_request(dicts, self.openai_body(sampling, kwargs))
        return _chat_result(routes.complete(connection, routes.CHAT, body), self.model_name)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        sampling = self.sampling_params(stop, kwargs)
        connection = self.connection()
        scope = active_scope(connection)
        content = _single_user_text(messages)
        if scope is not None and content is not None:
            future = scope.add_call(parts_of(content), sampling, chat=True)
            return ChatResult(generations=[ChatGeneration(message=SemanticAIMessage.of(future))])
        dicts = await routes.amessage_dicts(messages)
        body = routes.chat_request(dicts, self.openai_body(sampling, kwargs))
        return _chat_result(await routes.acomplete(connection, routes.CHAT, body), self.model_name)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        sampling = self.sampling_params(stop, kwargs)
        connection = self.connection()
        scope = active_scope(connection)
        content = _single_user_text(messages)
        if scope is not None and content is not None:
            (ref,) = scope.add_call(parts_of(content), sampling, chat=True).parts
            deltas: Iterator[routes.Delta] = routes.graph_stream(scope, ref.var)  # type: ignore[union-attr]
        else:
            dicts = routes.message_dicts(messages)
            body = routes.chat_request(dicts, self.openai_body(sampling, kwargs))
            deltas = routes.stream(connection, routes.CHAT, body)
        for delta in deltas:
            chunk = _chunk(delta)
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
        sampling = self.sampling_params(stop, kwargs)
        connection = self.connection()
        scope = active_scope(connection)
        content = _single_user_text(messages)
        if scope is not None and content is not None:
            (ref,) = scope.add_call(parts_of(content), sampling, chat=True).parts
            deltas: AsyncIterator[routes.Delta] = routes.agraph_stream(scope, ref.var)  # type: ignore[union-attr]
        else:
            dicts = await routes.amessage_dicts(messages)
            body = routes.chat_request(dicts, self.openai_body(sampling, kwargs))
            deltas = routes.astream(connection, routes.CHAT, body)
        async for delta in deltas:
            chunk = _chunk(delta)
            if run_manager is not None and delta.text:
                await run_manager.on_llm_new_token(delta.text, chunk=chunk)
            yield chunk

    # ---- batches: one graph --------------------------------------------------------------
    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """All prompts as ONE graph (one submit), unless a graph scope is already open."""
        if len(inputs) < 2 or active_scope(self.connection()) is not None:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        with GraphScope(self.connection(), raise_on_exit=False) as private:
            outputs = super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        return [_settled(o, private, self.model_name, return_exceptions) for o in outputs]

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        if len(inputs) < 2 or active_scope(self.connection()) is not None:
            return await super().abatch(
                inputs, config, return_exceptions=return_exceptions, **kwargs
            )
        async with GraphScope(self.connection(), raise_on_exit=False) as private:
            outputs = await super().abatch(
                inputs, config, return_exceptions=return_exceptions, **kwargs
            )
        return [_settled(o, private, self.model_name, return_exceptions) for o in outputs]


def _single_user_text(messages: Sequence[BaseMessage]) -> str | None:
    """The text of a prompt that is exactly one human message (a graph call), else None."""
    if len(messages) == 1 and messages[0].type == "human":
        return routes.message_text(messages[0])
    return None


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
    return AIMessage(
        content=delta.text,
        response_metadata={"finish_reason": delta.finish_reason, "model_name": model_name},
        usage_metadata=usage_of(delta.prompt_tokens, delta.completion_tokens),  # type: ignore[arg-type]
    )


def _chat_result(delta: routes.Delta, model_name: str | None) -> ChatResult:
    usage = usage_of(delta.prompt_tokens, delta.completion_tokens)
    return ChatResult(
        generations=[ChatGeneration(message=_message(delta, model_name))],
        llm_output={"token_usage": usage, "model_name": model_name},
    )


def _chunk(delta: routes.Delta) -> ChatGenerationChunk:
    if delta.finish_reason is None and not delta.completion_tokens:
        return ChatGenerationChunk(message=AIMessageChunk(content=delta.text))
    message = AIMessageChunk(
        content=delta.text,
        response_metadata={"finish_reason": delta.finish_reason},
        usage_metadata=usage_of(delta.prompt_tokens, delta.completion_tokens),  # type: ignore[arg-type]
        chunk_position="last",
    )
    return ChatGenerationChunk(message=message)
