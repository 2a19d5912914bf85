"""`tree_summarize` response synthesis as ONE server-side map-reduce tree: the leaf summaries
are stripped and joined by transforms on the server and feed the root call's prompt, so a query
needs one submit and the leaves run as one task group (request path step 1 → ServeCore).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.prompts import BasePromptTemplate
from llama_index.core.response_synthesizers import TreeSummarize
from llama_index.core.types import RESPONSE_TEXT_TYPE

import parrotlet
from llama_index.llms.parrotlet.calls import add_call, prompt_of
from llama_index.llms.parrotlet.graph_mode import graph_llm
from parrotlet.api import SemanticVariable, Session

dispatcher = get_dispatcher(__name__)
_SEP = "\n\n"  # PromptHelper.repack joins stripped chunks with it


@dataclass(frozen=True)
class Tree:
    """One round's plan: leaf calls (none when one call answers), the root, its template."""

    root: SemanticVariable
    leaves: tuple[SemanticVariable, ...]
    template: BasePromptTemplate


class ParrotletTreeSummarize(TreeSummarize):
    """LlamaIndex's TreeSummarize with the map stage and its reduce in one graph; answers equal
    TreeSummarize's.

    The chunks are packed as TreeSummarize does; one chunk is one call. Otherwise each packed
    chunk gets a leaf call, and the root call reads `"\\n\\n".join(leaf.strip() ...)` — what
    TreeSummarize's next level reads when the summaries fit in one chunk. After the run the
    summaries are packed by TreeSummarize's own rule; if they do not pack into exactly that
    one chunk, the next levels continue from the summaries (one more submit per level).
    Streaming and structured output run LlamaIndex's per-call TreeSummarize.
    """

    @dispatcher.span
    def get_response(
        self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any
    ) -> RESPONSE_TEXT_TYPE:
        llm = graph_llm(self)
        if llm is None:
            return super().get_response(query_str, text_chunks, **response_kwargs)
        with llm.client.session() as session:
            while True:
                tree = self._plan(session, query_str, text_chunks, response_kwargs)
                answer = tree.root.get()  # demands the whole tree: it runs on the server
                summaries = [leaf.get() for leaf in tree.leaves]  # already set
                if self._settled(tree, summaries):
                    return answer
                text_chunks = summaries

    @dispatcher.span
    async def aget_response(
        self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any
    ) -> RESPONSE_TEXT_TYPE:
        llm = graph_llm(self)
        if llm is None:
            return await super().aget_response(query_str, text_chunks, **response_kwargs)
        async with llm.client.asession() as session:
            while True:
                tree = self._plan(session, query_str, text_chunks, response_kwargs)
                answer = await tree.root.aget()
                summaries = await asyncio.gather(*(leaf.aget() for leaf in tree.leaves))
                if self._settled(tree, summaries):
                    return answer
                text_chunks = summaries

    def _plan(
        self,
        session: Session,
        query_str: str,
        text_chunks: Sequence[str],
        response_kwargs: dict[str, Any],
    ) -> Tree:
        """Add this level's calls (and the root over their joined summaries) to `session`."""
        template = self._summary_template.partial_format(query_str=query_str)
        chunks = self._prompt_helper.repack(template, text_chunks=text_chunks, llm=self._llm)
        sampling = self._llm.sampling()

        def summarize(context: str | SemanticVariable) -> SemanticVariable:
            fields = {"context_str": context, **response_kwargs}
            return add_call(session, "summarize", prompt_of(self._llm, template, fields), sampling)

        if len(chunks) == 1:
            return Tree(summarize(chunks[0]), (), template)
        leaves = tuple(summarize(chunk) for chunk in chunks)
        joined = parrotlet.join([leaf.strip() for leaf in leaves], sep=_SEP)
        return Tree(summarize(joined), leaves, template)

    def _settled(self, tree: Tree, summaries: Sequence[str]) -> bool:
        """Whether TreeSummarize would have made the root call read what the graph's did: the
        summaries pack into one chunk equal to the server's join (no empty summary dropped)."""
        if not tree.leaves:
            return True
        joined = _SEP.join(s.strip() for s in summaries)
        return self._prompt_helper.repack(tree.template, summaries, llm=self._llm) == [joined]
