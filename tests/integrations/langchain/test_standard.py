"""LangChain's standard unit suite for ChatParrotlet, and the same checks for ParrotletLLM (the
suite has no LLM class): construction without a server, environment, tracing params, serdes."""

from __future__ import annotations

import json
import os
from typing import Any
from unittest import mock

import pytest
from langchain_core.load import dumpd
from langchain_tests.unit_tests import ChatModelUnitTests
from pydantic import ValidationError

from langchain_parrotlet import ChatParrotlet, ParrotletLLM

ENV = {"PARROTLET_BASE_URL": "http://parrotlet.test:8000", "PARROTLET_API_KEY": "env-key"}


class TestChatParrotletStandard(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatParrotlet]:
        return ChatParrotlet

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "SmolLM2-135M-Instruct", "base_url": "http://localhost:8000"}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return ENV, {}, {"base_url": ENV["PARROTLET_BASE_URL"], "api_key": "env-key"}


STANDARD = {"temperature": 0, "max_tokens": 100, "timeout": 60, "stop": [], "max_retries": 2}


def test_llm_init_with_standard_params() -> None:
    llm = ParrotletLLM(**STANDARD, api_key="test", model="SmolLM2-135M-Instruct")
    assert (llm.temperature, llm.max_tokens, llm.stop, llm.model_name) == (
        0,
        100,
        [],
        "SmolLM2-135M-Instruct",
    )
    assert llm.api_key is not None and llm.api_key.get_secret_value() == "test"
    assert ParrotletLLM(streaming=True).streaming is True


def test_llm_init_from_env() -> None:
    with mock.patch.dict(os.environ, ENV):
        llm = ParrotletLLM()
    assert llm.base_url == "http://parrotlet.test:8000"
    assert llm.api_key is not None and llm.api_key.get_secret_value() == "env-key"


def test_llm_ls_params() -> None:
    llm = ParrotletLLM(max_tokens=10, stop=["test"], temperature=0.5, model="m")
    assert llm._get_ls_params() == {
        "ls_provider": "parrotlet",
        "ls_model_name": "m",
        "ls_model_type": "llm",
        "ls_max_tokens": 10,
        "ls_temperature": 0.5,
        "ls_stop": ["test"],
    }
    assert llm._get_ls_params(model="other")["ls_model_name"] == "other"


def test_the_api_key_never_shows() -> None:
    for cls in (ParrotletLLM, ChatParrotlet):
        model = cls(base_url="http://h:1", api_key="secret-key")
        assert "secret-key" not in repr(model)
        assert "secret-key" not in json.dumps(dumpd(model))
        assert model.lc_secrets == {"api_key": "PARROTLET_API_KEY"}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", -1, "temperature must be a finite number >= 0"),
        ("top_p", 0, r"top_p must be in \(0, 1\]"),
        ("max_tokens", -2, "max_tokens must be an int >= 0"),
        ("timeout", 0, "timeout must be > 0"),
    ],
)
def test_bad_fields_are_rejected_with_their_name(field: str, value: Any, message: str) -> None:
    for cls in (ParrotletLLM, ChatParrotlet):
        with pytest.raises(ValidationError, match=message):
            cls(**{field: value})


def test_bad_base_url_and_call_options() -> None:
    with pytest.raises(ValueError, match="base_url must start with http"):
        ChatParrotlet(base_url="localhost:8000").connection()
    with pytest.raises(ValueError, match=r"unsupported call options \['logprobs'\]"):
        ChatParrotlet().sampling_params(None, {"logprobs": True})
