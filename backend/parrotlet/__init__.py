"""parrotlet: serve LLM applications end to end. This top-level package is the app-facing API
(semantic functions, Semantic Variables, Client); it must not import torch.
"""

from __future__ import annotations

from parrotlet.api import (
    Client,
    Output,
    SemanticFunction,
    SemanticVariable,
    Session,
    VariableResult,
    current_session,
    format,
    join,
    semantic_function,
    variable,
)
from parrotlet.engine.guide import Guide
from parrotlet.graph.ir import PerfCriterion
from parrotlet.serve.errors import AuthError, GraphError, NotFoundError, ServeTimeoutError

__version__ = "0.1.0"

__all__ = [
    "AuthError",
    "Client",
    "GraphError",
    "Guide",
    "NotFoundError",
    "Output",
    "PerfCriterion",
    "SemanticFunction",
    "SemanticVariable",
    "ServeTimeoutError",
    "Session",
    "VariableResult",
    "__version__",
    "current_session",
    "format",
    "join",
    "semantic_function",
    "variable",
]
