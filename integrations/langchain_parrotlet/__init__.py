"""LangChain adapter for parrotlet: `ParrotletLLM` and `ChatParrotlet` send LangChain calls to a
parrotlet server; `parrotlet_graph()` turns the calls of a chain into one Semantic-Variable graph
whose dependencies run server-side. Importing it does not import torch.
"""

from __future__ import annotations

from langchain_parrotlet.chat_models import ChatParrotlet, SemanticAIMessage
from langchain_parrotlet.converters import GraphRunnable, as_graph
from langchain_parrotlet.futures import SemanticText, aresolve, resolve, resolve_text
from langchain_parrotlet.llms import ParrotletLLM
from langchain_parrotlet.scope import GraphScope, parrotlet_graph

__all__ = [
    "ChatParrotlet",
    "GraphRunnable",
    "GraphScope",
    "ParrotletLLM",
    "SemanticAIMessage",
    "SemanticText",
    "aresolve",
    "as_graph",
    "parrotlet_graph",
    "resolve",
    "resolve_text",
]
