"""Importing the LangChain adapter (and building models and prompts with it) imports no torch."""

from __future__ import annotations

import os
import subprocess
import sys

CODE = """
import sys
from langchain_core.prompts import ChatPromptTemplate
import langchain_parrotlet as L

chat = L.ChatParrotlet(base_url="http://127.0.0.1:9", api_key="k", temperature=0)
llm = L.ParrotletLLM(base_url="http://127.0.0.1:9", chat=True)
chat.connection()  # opens a remote Client: no request yet
prompt = ChatPromptTemplate.from_messages([("human", "{x}")]).invoke({"x": "y"})
print(sorted(m for m in ("torch", "transformers", "parrotlet.serve.core") if m in sys.modules))
"""


def test_importing_the_adapter_does_not_import_torch() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.strip() == "[]"
