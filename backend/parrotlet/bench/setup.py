"""Benchmark setup: the model (a local folder or a random-weight architecture), its tokenizer, and
engines that share the model's weights, each with its own KV pool and scheduler limits.

Every variant of a workload runs on engines built here, so variants differ only in the flags they
name (token cap, prefix sharing, shared-prefix attention), never in the model.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import torch

from parrotlet.engine.async_engine import AsyncEngine
from parrotlet.engine.config import CacheConfig, EngineConfig, check_device
from parrotlet.engine.engine import LLMEngine, resolve_device, resolve_dtype
from parrotlet.engine.models.config import ModelConfig
from parrotlet.engine.models.default_model import resolve_model_path
from parrotlet.engine.models.llama import LlamaForCausalLM
from parrotlet.engine.models.loader import load_model
from parrotlet.engine.tokenizer import load_tokenizer
from parrotlet.serve.config import ServeConfig
from parrotlet.serve.core import ServeCore
from parrotlet.serve.engines import LocalEngine, ModelInfo

# Architectures built with random weights (nothing to download). The vocabulary is the tokenizer's,
# so every generated id decodes; for Llama-3-8B that shrinks the embedding/LM head (49152 rows
# with the default tokenizer instead of 128256: 0.6 of 16 GB of weights).
ARCHS: dict[str, dict] = {
    "llama3-8b-random": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=16384,
        rope_theta=500000.0,
    ),
    "tiny-random": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16384,
        rope_theta=10000.0,
    ),
}


@dataclass(frozen=True)
class BenchSpec:
    """Which model runs where: `model` (a folder; None = the default model) or `arch` (random)."""

    device: str = "cpu"
    model: str | None = None
    arch: str | None = None
    tokenizer: str | None = None  # default: the model's own, else the default model's
    kv_cache_fraction: float = 0.85  # of free GPU memory (or of `cpu_kv_cache_bytes`) for KV

    def __post_init__(self) -> None:
        check_device(self.device)
        if self.arch is not None and self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; choose from {', '.join(ARCHS)}")
        if not 0 < self.kv_cache_fraction <= 1:
            raise ValueError(f"kv_cache_fraction must be in (0, 1], got {self.kv_cache_fraction}")
        if self.arch is not None and self.model is not None:
            raise ValueError("give either a model folder or a random arch, not both")

    @property
    def model_name(self) -> str:
        return self.arch or resolve_model_path(self.model).name


class Bench:
    """The loaded model and tokenizer; builds ServeCores over engines that share the weights."""

    def __init__(self, spec: BenchSpec) -> None:
        self.spec = spec
        self.device = resolve_device(spec.device)
        dtype_config = EngineConfig(device=spec.device)
        tokenizer_path = spec.tokenizer or (spec.model if spec.arch is None else None)
        self.tokenizer = load_tokenizer(resolve_model_path(tokenizer_path))
        if spec.arch is None:
            path = resolve_model_path(spec.model)
            self.model, _ = load_model(path, dtype=resolve_dtype(dtype_config), device=self.device)
        else:
            self.model = random_model(
                spec.arch, len(self.tokenizer), resolve_dtype(dtype_config), self.device
            )
        self.config: ModelConfig = self.model.config

    @asynccontextmanager
    async def cores(
        self,
        configs: dict[str, ServeConfig],
        *,
        num_engines: int = 1,
        engine: EngineConfig | None = None,
    ) -> AsyncIterator[dict[str, ServeCore]]:
        """ServeCores with `configs` over the same `num_engines` fresh engines (empty caches) of
        `engine`'s flags. On exit the engines are closed and the yielded dict emptied, so their
        KV pools are freed though the caller's `as` name outlives the block: the next `cores`
        sizes its pools from the memory then free."""
        base = engine or EngineConfig()
        engines = [
            LocalEngine(AsyncEngine(self._engine(base, num_engines)), name=f"local-{i}")
            for i in range(num_engines)
        ]
        info = ModelInfo(
            self.spec.model_name,
            engines[0].async_engine.engine.max_model_len,
            self.config.eos_token_ids,
        )
        cores = {
            name: ServeCore(engines, self.tokenizer, info, config, owns_engines=False)
            for name, config in configs.items()
        }
        try:
            yield cores
        finally:
            for handle in engines:
                await handle.close()
            cores.clear()
            del engines, cores
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _engine(self, base: EngineConfig, num_engines: int) -> LLMEngine:
        config = replace(
            base,
            device=self.spec.device,
            cache=replace(base.cache, num_blocks=self._num_blocks(base.cache, num_engines)),
        )
        return LLMEngine(config, self.model, self.tokenizer)

    def _num_blocks(self, cache: CacheConfig, num_engines: int) -> int:
        """An equal share of the KV memory for each of `num_engines` engines."""
        c = self.config
        dtype_bytes = next(self.model.parameters()).element_size()
        block_bytes = 2 * c.num_layers * c.num_kv_heads * c.head_dim * cache.block_size
        block_bytes *= dtype_bytes
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = free * self.spec.kv_cache_fraction
        else:
            budget = cache.cpu_kv_cache_bytes * self.spec.kv_cache_fraction
        return max(1, int(budget // num_engines // block_bytes))


def random_model(
    arch: str, vocab_size: int, dtype: torch.dtype, device: torch.device
) -> LlamaForCausalLM:
    """A Llama model of architecture `arch` with random weights (std 0.02, norms 1)."""
    hf = dict(
        ARCHS[arch],
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        vocab_size=vocab_size,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        torch_dtype=str(dtype).removeprefix("torch."),
    )
    config = ModelConfig.from_hf_config(hf)
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(dtype)
    model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
    return model.eval()
