"""`parrotlet serve --device cuda` as a user starts it (`-m gpu`): the CLI process picks the
flashinfer backend by itself (`--attention reference` forces the oracle), serves the
OpenAI-compatible route and the session API, and its greedy text equals an in-process engine's.

The GPU image has no default model: the tokenizer comes from $PARROTLET_TEST_TOKENIZER (a folder
of the default model's tokenizer files) or, where installed, from the default model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch
import transformers

import parrotlet as P
from parrotlet.engine.config import EngineConfig
from parrotlet.engine.engine import LLMEngine
from parrotlet.engine.sampling_params import SamplingParams

from .test_serve_command import free_port

pytestmark = pytest.mark.gpu

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
PROMPT = "The capital of France is"


def tokenizer_dir() -> Path:
    if os.environ.get("PARROTLET_TEST_TOKENIZER"):
        return Path(os.environ["PARROTLET_TEST_TOKENIZER"])
    from parrotlet.engine.models.default_model import default_model_path

    return default_model_path()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama with random weights, head_dim 128, over the default model's tokenizer."""
    folder = tmp_path_factory.mktemp("serve_gpu_model")
    source = tokenizer_dir()
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, folder / name)
    vocab = len(transformers.AutoTokenizer.from_pretrained(folder))
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=128, max_position_embeddings=2048,
        eos_token_id=None, bos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@contextmanager
def serving(model_dir: Path, log: Path, *flags: str) -> Iterator[str]:
    """A `parrotlet serve` process on a free port, its stderr in `log`; yields its URL."""
    port = free_port()
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "parrotlet.cli", "serve", "--model", str(model_dir),
             "--device", "cuda", "--port", str(port), "--api-key", "k", "-v", *flags],
            stderr=err,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # flashinfer may JIT-compile its kernels first
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        assert proc.poll() is None, f"the server exited during start-up:\n{log.read_text()}"
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def complete(url: str) -> str:
    response = httpx.post(
        f"{url}/v1/completions",
        headers={"Authorization": "Bearer k"},
        json={"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "ignore_eos": True},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["usage"]["completion_tokens"] == 12
    return body["choices"][0]["text"]


def engine_text(model_dir: Path, backend: str) -> str:
    engine = LLMEngine.from_config(
        EngineConfig(model=str(model_dir), device="cuda", attention_backend=backend)
    )
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    return engine.generate([PROMPT], params)[0].text


def test_serve_picks_flashinfer_and_serves_both_apis(model_dir: Path, tmp_path: Path) -> None:
    @P.semantic_function(temperature=0, max_tokens=6, ignore_eos=True)
    def continue_(text, out):
        """{{input:text}}{{output:out}}"""

    with serving(model_dir, tmp_path / "serve.log") as url:
        text = complete(url)
        client = P.Client(url, api_key="k")
        with client, client.session():
            final = continue_(continue_(PROMPT)).get()  # two dependent calls, one submit

    assert text == engine_text(model_dir, "flashinfer")
    assert isinstance(final, str) and final
    assert "FlashInferBackend" in (tmp_path / "serve.log").read_text()


def test_serve_attention_reference_forces_the_oracle(model_dir: Path, tmp_path: Path) -> None:
    with serving(model_dir, tmp_path / "serve.log", "--attention", "reference") as url:
        text = complete(url)

    assert text == engine_text(model_dir, "reference")
    assert "TorchReferenceBackend" in (tmp_path / "serve.log").read_text()
