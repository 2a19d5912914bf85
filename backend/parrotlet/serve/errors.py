"""Errors ServeCore raises; the HTTP layer maps each to one status code."""

from __future__ import annotations

from parrotlet.graph.ir import GraphError

__all__ = ["AuthError", "GraphError", "NotFoundError", "ServeTimeoutError"]


class NotFoundError(LookupError):
    """A session or variable that does not exist for this tenant (HTTP 404)."""


class AuthError(PermissionError):
    """A missing or wrong API key (HTTP 401)."""


class ServeTimeoutError(TimeoutError):
    """A blocking get that ran out of time before the value was set (HTTP 408)."""
