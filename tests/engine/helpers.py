"""Builders for engine tests: tiny random-weight HF checkpoints and engines over them."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from parrotlet.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from parrotlet.engine.engine import LLMEngine
from parrotlet.engine.models.loader import load_model

TINY = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    eos_token_id=None,
    bos_token_id=None,
    pad_token_id=0,
)

# head_dim 128 (flashinfer has kernels for 64 / 128 / 256), GQA 2: the GPU tests' model
GPU_ARCH = {**TINY, "hidden_size": 512, "intermediate_size": 1024}

CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**TINY),
    "qwen2": lambda: transformers.Qwen2Config(**TINY, use_sliding_window=False),
    "qwen3": lambda: transformers.Qwen3Config(**TINY, head_dim=16, use_sliding_window=False),
}


def make_checkpoint(arch: str, folder: Path, seed: int = 0) -> transformers.PreTrainedModel:
    """Save a random-weight model of `arch` into `folder`; return the HF model (the oracle)."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS[arch]())
    model.eval()
    model.save_pretrained(folder)
    return model


def make_engine(
    folder: Path,
    *,
    num_blocks: int = 256,
    block_size: int = 16,
    budget: int = 2048,
    max_seqs: int = 64,
    tokenizer=None,
    **kwargs,
) -> LLMEngine:
    config = EngineConfig(
        model=str(folder),
        cache=CacheConfig(block_size=block_size, num_blocks=num_blocks),
        scheduler=SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=max_seqs),
        **kwargs,
    )
    model, _ = load_model(folder, dtype=torch.float32, device=torch.device("cpu"))
    return LLMEngine(config, model, tokenizer=tokenizer)


def hf_greedy(model: transformers.PreTrainedModel, prompt: list[int], max_tokens: int) -> list[int]:
    """transformers generate, greedy, one prompt at a time (the oracle)."""
    ids = torch.tensor([prompt])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_tokens,
        do_sample=False,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


def make_prompts(lengths: list[int], seed: int = 1, vocab: int = 256) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lengths]
