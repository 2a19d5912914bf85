"""HTTP-layer fixtures: the shared real ServeCore behind one app, and a client per tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from parrotlet.serve.app import create_app
from parrotlet.serve.auth import ApiKeys
from parrotlet.serve.core import ServeCore

from .helpers import KEY_A, KEY_B, make_client


@pytest.fixture(scope="session")
async def core(default_core: ServeCore) -> ServeCore:
    """The session-wide default-model core (tests/conftest.py), started on the test loop."""
    await default_core.start()
    return default_core


@pytest.fixture(scope="session")
def app(core: ServeCore) -> FastAPI:
    return create_app(core, ApiKeys([KEY_A, KEY_B]))


@pytest.fixture
async def client_a(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(app, KEY_A) as client:
        yield client


@pytest.fixture
async def client_b(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(app, KEY_B) as client:
        yield client


@pytest.fixture
async def anonymous(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(app, None) as client:
        yield client
