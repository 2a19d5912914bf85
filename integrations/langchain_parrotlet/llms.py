"""ParrotletLLM: LangChain's text-completion interface to a parrotlet server — the adapter step of
the request path. One prompt is one request; a batch is one graph (one submit); inside a graph
scope every call joins the scope's graph and returns a SemanticText future.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM, LangSmithParams
from langchain_core.outputs import Generation, GenerationChunk, LLMResult

from langchain_parrotlet import routes
from langchain_parrotlet.futures import SemanticText, aresolve_text, parts_of, resolve_text
from langchain_parrotlet.params import ParrotletParams
from langchain_parrotlet.scope import GraphScope
from parrotlet.engine.sampling_params import SamplingParams

__all__ = ["ParrotletLLM"]


class ParrotletLLM(ParrotletParams, BaseLLM):
    """A parrotlet-served model as a LangChain LLM (text in, text out).

    Example:
        ```python
        import parrotlet
        from langchain_parrotlet import ParrotletLLM, parrotlet_graph

        llm = ParrotletLLM(client=parrotlet.Client.in_process(), temperature=0, max_tokens=32)
        llm.invoke("The capital of France is")  # one /v1/completions request
        llm.batch(["a", "b", "c"])  # one graph of three calls: one submit
        with parrotlet_graph(llm):  # calls become one server-side graph
            summary = (prompt | llm | StrOutputParser()).invoke({"text": "..."})
        ```

    Outside a graph scope a single prompt goes through `/v1/completions` (or, with `chat`,
    `/v1/chat/completions` as one user message); several prompts of one `batch`/`generate` go as
    ONE graph. Inside `parrotlet_graph(...)` results are SemanticText futures.
    """

    chat: bool = False
    """Send each prompt as one user message through the model's chat template (on the server)."""

    @property
    def _llm_type(self) -> str:
        return "parrotlet"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {**self.identifying_fields(), "chat": self.chat}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return LangSmithParams(**self.ls_fields("llm", stop, **kwargs))  # type: ignore[typeddict-item]

    # ---- sync ----------------------------------------------------------------------------
    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        sampling = self.sampling_params(stop, kwargs)
        scope = self.graph_scope()
        if self.streaming and len(prompts) == 1:
            chunks = list(self._stream(prompts[0], stop, run_manager, **kwargs))
            return _result([_join(chunks)], self.served_model_name())
        if scope is not None:
            return _deferred(scope, prompts, sampling, self.chat)
        if len(prompts) == 1:
            path, body = self._request(resolve_text(prompts[0]), sampling, kwargs)
            return _result(
                [routes.complete(self.connection(), path, body)], self.served_model_name()
            )
        with GraphScope(self.connection()) as private:
            futures = _deferred(private, prompts, sampling, self.chat)
        return _resolved(private, futures, self.served_model_name())

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        sampling = self.sampling_params(stop, kwargs)
        scope = self.graph_scope()
        if scope is not None:
            (ref,) = scope.add_call(parts_of(prompt), sampling, self.chat).parts
            deltas = routes.graph_stream(scope, ref.var)  # type: ignore[union-attr]
        else:
            path, body = self._request(resolve_text(prompt), sampling, kwargs)
            deltas = routes.stream(self.connection(), path, body)
        for delta in deltas:
            chunk = _chunk(delta)
            if run_manager is not None and delta.text:
                run_manager.on_llm_new_token(delta.text, chunk=chunk)
            yield chunk

    # ---- async ---------------------------------------------------------------------------
    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        sampling = self.sampling_params(stop, kwargs)
        scope = self.graph_scope()
        if self.streaming and len(prompts) == 1:
            chunks = [c async for c in self._astream(prompts[0], stop, run_manager, **kwargs)]
            return _result([_join(chunks)], self.served_model_name())
        if scope is not None:
            return _deferred(scope, prompts, sampling, self.chat)
        if len(prompts) == 1:
            path, body = self._request(await aresolve_text(prompts[0]), sampling, kwargs)
            delta = await routes.acomplete(self.connection(), path, body)
            return _result([delta], self.served_model_name())
        async with GraphScope(self.connection()) as private:
            futures = _deferred(private, prompts, sampling, self.chat)
        return _resolved(private, futures, self.served_model_name())

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        sampling = self.sampling_params(stop, kwargs)
        scope = self.graph_scope()
        if scope is not None:
            (ref,) = scope.add_call(parts_of(prompt), sampling, self.chat).parts
            deltas = routes.agraph_stream(scope, ref.var)  # type: ignore[union-attr]
        else:
            path, body = self._request(await aresolve_text(prompt), sampling, kwargs)
            deltas = routes.astream(self.connection(), path, body)
        async for delta in deltas:
            chunk = _chunk(delta)
            if run_manager is not None and delta.text:
                await run_manager.on_llm_new_token(delta.text, chunk=chunk)
            yield chunk

    def _request(
        self, prompt: str, sampling: SamplingParams, options: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        return routes.prompt_request(prompt, self.chat, self.openai_body(sampling, options))


# ---- graph-side helpers --------------------------------------------------------------------
def _deferred(
    scope: GraphScope, prompts: Sequence[str], sampling: SamplingParams, chat: bool
) -> LLMResult:
    """One call per prompt in `scope`; generations hold the futures (validation would copy
    them into plain str, so they are constructed as is)."""
    futures = [scope.add_call(parts_of(p), sampling, chat) for p in prompts]
    return LLMResult(generations=[[Generation.model_construct(text=f)] for f in futures])


def _resolved(scope: GraphScope, deferred: LLMResult, model_name: str | None) -> LLMResult:
    """The real texts of a private scope's futures, with finish reasons and usage."""
    deltas = []
    for (generation,) in deferred.generations:
        future = generation.text
        assert isinstance(future, SemanticText)
        (ref,) = future.parts
        result = scope.result(ref.var)  # type: ignore[union-attr]
        deltas.append(
            routes.Delta(
                result.value,
                result.finish_reason,
                result.prompt_tokens,
                result.completion_tokens,
            )
        )
    return _result(deltas, model_name)


def _chunk(delta: routes.Delta) -> GenerationChunk:
    info = None
    if delta.finish_reason is not None or delta.completion_tokens:
        info = {
            "finish_reason": delta.finish_reason,
            "prompt_tokens": delta.prompt_tokens,
            "completion_tokens": delta.completion_tokens,
        }
    return GenerationChunk(text=delta.text, generation_info=info)


def _join(chunks: Sequence[GenerationChunk]) -> routes.Delta:
    info: dict[str, Any] = {}
    for chunk in chunks:
        info.update(chunk.generation_info or {})
    return routes.Delta(
        "".join(c.text for c in chunks),
        info.get("finish_reason"),
        info.get("prompt_tokens", 0),
        info.get("completion_tokens", 0),
    )


def _result(deltas: Sequence[routes.Delta], model_name: str | None) -> LLMResult:
    generations = [
        [Generation(text=d.text, generation_info={"finish_reason": d.finish_reason})]
        for d in deltas
    ]
    prompt = sum(d.prompt_tokens for d in deltas)
    completion = sum(d.completion_tokens for d in deltas)
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    return LLMResult(
        generations=generations, llm_output={"token_usage": usage, "model_name": model_name}
    )
