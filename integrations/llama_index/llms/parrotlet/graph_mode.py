"""When a LlamaIndex response synthesizer can run as one parrotlet graph, and the factory that
gives the graph versions of LlamaIndex's `refine`, `compact` and `tree_summarize` synthesizers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llama_index.core.response_synthesizers import (
    BaseSynthesizer,
    CompactAndRefine,
    Refine,
    ResponseMode,
    TreeSummarize,
)
from llama_index.core.response_synthesizers import (
    get_response_synthesizer as core_get_response_synthesizer,
)

from llama_index.llms.parrotlet.base import Parrotlet

if TYPE_CHECKING:
    from llama_index.core.llms import LLM


def graph_llm(synthesizer: BaseSynthesizer) -> Parrotlet | None:
    """The synthesizer's Parrotlet LLM when its calls can be one graph, else None (then it
    runs LlamaIndex's per-call code): text answers only — no streaming, structured output or
    answer filtering, output parser or multimodal content."""
    llm = synthesizer._llm
    per_call = (
        synthesizer._streaming
        or synthesizer._output_cls is not None
        or synthesizer._multimodal
        or getattr(synthesizer, "_structured_answer_filtering", False)
        or not isinstance(llm, Parrotlet)
        or llm.output_parser is not None
    )
    return None if per_call else llm


def get_response_synthesizer(
    llm: LLM | None = None,
    *,
    response_mode: ResponseMode | str = ResponseMode.COMPACT,
    **kwargs: Any,
) -> BaseSynthesizer:
    """`llama_index.core.get_response_synthesizer` with the same (keyword) arguments, whose
    `refine`, `compact` and `tree_summarize` synthesizers run as parrotlet graphs on a
    Parrotlet LLM (other modes are LlamaIndex's own)."""
    synthesizer = core_get_response_synthesizer(
        llm=llm, response_mode=ResponseMode(response_mode), **kwargs
    )
    return as_graph(synthesizer)


def as_graph(synthesizer: BaseSynthesizer) -> BaseSynthesizer:
    """The graph version of a LlamaIndex Refine, CompactAndRefine or TreeSummarize with the
    same configuration (the graph classes add methods only); any other synthesizer as is."""
    from llama_index.llms.parrotlet.refine import ParrotletCompactAndRefine, ParrotletRefine
    from llama_index.llms.parrotlet.tree_summarize import ParrotletTreeSummarize

    graph_classes: dict[type, type[BaseSynthesizer]] = {
        Refine: ParrotletRefine,
        CompactAndRefine: ParrotletCompactAndRefine,
        TreeSummarize: ParrotletTreeSummarize,
    }
    graph_cls = graph_classes.get(type(synthesizer))
    if graph_cls is None:
        return synthesizer
    graph = graph_cls.__new__(graph_cls)
    graph.__dict__.update(synthesizer.__dict__)
    return graph
