"""Fixtures of the LangChain adapter tests: ONE in-process parrotlet Client (default model) for
the whole package, and request counting from the server's own stats."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import parrotlet as P


@pytest.fixture(scope="package")
def client() -> Iterator[P.Client]:
    client = P.Client.in_process()
    yield client
    client.close()


class Requests:
    """Counts the client requests ServeCore saw ("submit", "get", "complete", ...) since start."""

    def __init__(self, client: P.Client) -> None:
        assert client.core is not None
        self.core = client.core
        self.before = dict(self.core.stats().client_requests)

    def delta(self) -> dict[str, int]:
        after = self.core.stats().client_requests
        return {
            k: v - self.before.get(k, 0) for k, v in after.items() if v != self.before.get(k, 0)
        }

    def submits(self) -> int:
        return self.delta().get("submit", 0)
