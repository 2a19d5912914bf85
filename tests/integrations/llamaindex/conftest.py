"""Fixtures of the LlamaIndex adapter tests: ONE in-process client on the default model for the
whole package, the offline embedding model, and a recorder of what the adapter submits."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

if importlib.util.find_spec("llama_index.core") is None:  # the `llamaindex` extra is missing
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="package")
def client(default_model_dir: Path) -> Iterator[Any]:
    import parrotlet as P

    client = P.Client.in_process()
    yield client
    client.close()


@pytest.fixture(scope="package")
def embed_model() -> Any:
    from llama_index.llms.parrotlet import local_embedding

    return local_embedding()


@dataclass
class Recording:
    """What reached ServeCore: each submitted graph, and each session's plans (objective and
    task group per node) as the server had them when the session was deleted."""

    graphs: list[Any] = field(default_factory=list)
    plans: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def recording(client: Any, monkeypatch: pytest.MonkeyPatch) -> Recording:
    core, record = client.core, Recording()
    submit, delete = core.submit, core.delete_session

    def recording_submit(tenant: str, session_id: str, graph: Any, **options: Any) -> Any:
        record.graphs.append(graph)
        return submit(tenant, session_id, graph, **options)

    def recording_delete(tenant: str, session_id: str) -> None:
        record.plans.append(dict(core._sessions[session_id].plans))
        delete(tenant, session_id)

    monkeypatch.setattr(core, "submit", recording_submit)
    monkeypatch.setattr(core, "delete_session", recording_delete)
    return record
