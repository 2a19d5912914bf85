"""The app-facing API: semantic functions and Semantic Variable futures build graph increments,
which a Client sends to ServeCore (over HTTP or in-process). Imports neither torch nor httpx.
"""

from __future__ import annotations

from parrotlet.api.client import Client
from parrotlet.api.function import Output, SemanticFunction, semantic_function
from parrotlet.api.session import Session, current_session
from parrotlet.api.variable import SemanticVariable, format, join, variable
from parrotlet.serve.results import VariableResult

__all__ = [
    "Client",
    "Output",
    "SemanticFunction",
    "SemanticVariable",
    "Session",
    "VariableResult",
    "current_session",
    "format",
    "join",
    "semantic_function",
    "variable",
]
