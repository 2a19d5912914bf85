"""`refine` / `compact` response synthesis as ONE server-side chain: each answer reaches the next
refine prompt through a `format` transform on the server (request path step 1 → ServeCore), so
the QA → refine → refine … calls of a query need one submit and no client round trip.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.prompts.prompt_utils import get_biggest_prompt
from llama_index.core.response_synthesizers import CompactAndRefine, Refine
from llama_index.core.types import RESPONSE_TEXT_TYPE

from llama_index.llms.parrotlet.base import Parrotlet
from llama_index.llms.parrotlet.calls import add_call, prompt_of
from llama_index.llms.parrotlet.graph_mode import graph_llm
from parrotlet.api import SemanticVariable, Session

dispatcher = get_dispatcher(__name__)


class ParrotletRefine(Refine):
    """LlamaIndex's Refine with the whole chain in one graph; answers equal Refine's.

    The chain is planned as Refine runs in the usual case: every chunk fits its refine prompt
    in one piece and every answer is non-empty. After the run, Refine's own bookkeeping is
    replayed over the real answers (repacking each chunk against the real previous answer);
    from the first step where Refine would have done otherwise, a new graph continues (one more
    submit). Streaming, structured output, answer filtering, an LLM output parser and
    multimodal synthesis run LlamaIndex's per-call Refine.
    """

    @dispatcher.span
    def get_response(
        self,
        query_str: str,
        text_chunks: Sequence[str],
        prev_response: RESPONSE_TEXT_TYPE | None = None,
        **response_kwargs: Any,
    ) -> RESPONSE_TEXT_TYPE:
        llm = self._graph_llm(prev_response)
        if llm is None:
            return super().get_response(query_str, text_chunks, prev_response, **response_kwargs)
        chunks, response = self._first_chunks(text_chunks), prev_response
        with llm.client.session() as session:
            while chunks:
                answers = self._plan(session, query_str, chunks, response, response_kwargs)
                answers[-1].get()  # demands the whole chain: it runs on the server
                values = [a.get() for a in answers]  # already set: no generation waits
                response, chunks = self._replay(query_str, chunks, response, values)
        return response or "Empty Response"

    @dispatcher.span
    async def aget_response(
        self,
        query_str: str,
        text_chunks: Sequence[str],
        prev_response: RESPONSE_TEXT_TYPE | None = None,
        **response_kwargs: Any,
    ) -> RESPONSE_TEXT_TYPE:
        llm = self._graph_llm(prev_response)
        if llm is None:
            return await super().aget_response(
                query_str, text_chunks, prev_response, **response_kwargs
            )
        chunks, response = self._first_chunks(text_chunks), prev_response
        async with llm.client.asession() as session:
            while chunks:
                answers = self._plan(session, query_str, chunks, response, response_kwargs)
                await answers[-1].aget()
                values = await asyncio.gather(*(a.aget() for a in answers))
                response, chunks = self._replay(query_str, chunks, response, values)
        return response or "Empty Response"

    def _graph_llm(self, prev_response: RESPONSE_TEXT_TYPE | None) -> Parrotlet | None:
        """The Parrotlet LLM when this refine can be a graph (a text answer so far, if any)."""
        text_so_far = prev_response is None or isinstance(prev_response, str)
        return graph_llm(self) if text_so_far else None

    def _first_chunks(self, text_chunks: Sequence[str]) -> deque[str]:
        """Refine's first packing: each chunk alone, padded for the biggest prompt."""
        max_prompt = get_biggest_prompt([self._text_qa_template, self._refine_template])
        return deque(
            piece
            for chunk in text_chunks
            for piece in self._prompt_helper.repack(
                max_prompt, [chunk], llm=self._llm, padding=self._response_padding_size
            )
        )

    def _repack(self, query_str: str, response: str, chunk: str) -> list[str]:
        """How Refine repacks `chunk` for the refine prompt that holds `response`."""
        template = self._refine_template.partial_format(
            query_str=query_str, existing_answer=response
        )
        return self._prompt_helper.repack(template, [chunk], llm=self._llm)

    def _fits(self, query_str: str, response: str | None, chunk: str) -> bool:
        """Whether Refine sends `chunk` as is in the prompt after `response`."""
        return response is None or self._repack(query_str, response, chunk) == [chunk]

    def _plan(
        self,
        session: Session,
        query_str: str,
        chunks: deque[str],
        response: str | None,
        response_kwargs: dict[str, Any],
    ) -> list[SemanticVariable]:
        """Add the chain over `chunks` to `session`; return each step's answer variable."""
        self._fit_first(query_str, chunks, response)
        llm, answer, answers = self._llm, response, []
        sampling = llm.sampling()
        for chunk in chunks:
            if answer is None:
                template = self._text_qa_template.partial_format(query_str=query_str)
                fields, name = {"context_str": chunk}, "qa"
            else:
                template = self._refine_template.partial_format(query_str=query_str)
                fields, name = {"existing_answer": answer, "context_msg": chunk}, "refine"
            prompt = prompt_of(llm, template, {**fields, **response_kwargs})
            answer = add_call(session, name, prompt, sampling)
            answers.append(answer)
        return answers

    def _fit_first(self, query_str: str, chunks: deque[str], response: str | None) -> None:
        """Pack the first chunk exactly as Refine would (its previous answer is known here), so
        every round settles at least one chunk."""
        if response is None:
            return
        while len(pieces := self._repack(query_str, response, chunks[0])) > 1:
            chunks.popleft()
            chunks.extendleft(pieces)  # as Refine does (extendleft reverses them)
        chunks[0] = pieces[0]

    def _replay(
        self, query_str: str, chunks: deque[str], response: str | None, values: Sequence[str]
    ) -> tuple[str | None, deque[str]]:
        """Refine's loop over the computed answers: the answer and the chunks left after the
        last step the plan got right (a later step read an answer Refine would not pass)."""
        chunks = deque(chunks)
        for i, value in enumerate(values):
            if i > 0 and not self._fits(query_str, response, chunks[0]):
                return response, chunks  # Refine repacks this chunk: plan again from here
            chunks.popleft()
            if not value:
                return response, chunks  # Refine keeps the previous answer; the plan did not
            response = value
        return response, chunks


class ParrotletCompactAndRefine(CompactAndRefine, ParrotletRefine):
    """LlamaIndex's `compact` mode (its default): chunks are compacted as CompactAndRefine does,
    then refined as one server-side chain by ParrotletRefine."""
