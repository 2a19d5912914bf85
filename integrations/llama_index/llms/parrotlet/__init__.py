"""LlamaIndex integration of parrotlet: the `Parrotlet` LLM, response synthesizers whose
`refine` / `compact` / `tree_summarize` calls run as one server-side graph, and an offline
embedding model. Importing it does not import torch.
"""

from __future__ import annotations

from llama_index.llms.parrotlet.base import Parrotlet
from llama_index.llms.parrotlet.embeddings import local_embedding
from llama_index.llms.parrotlet.graph_mode import as_graph, get_response_synthesizer
from llama_index.llms.parrotlet.refine import ParrotletCompactAndRefine, ParrotletRefine
from llama_index.llms.parrotlet.tree_summarize import ParrotletTreeSummarize

__all__ = [
    "Parrotlet",
    "ParrotletCompactAndRefine",
    "ParrotletRefine",
    "ParrotletTreeSummarize",
    "as_graph",
    "get_response_synthesizer",
    "local_embedding",
]
