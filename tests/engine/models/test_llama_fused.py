"""The model's fused-kernel path (flashinfer on CUDA) against its plain torch path.

On CPU, torch stand-ins with flashinfer's signatures check the fused control flow (the norms
and residual adds handed to the projections, which off the GPU run the norm then torch; the
RoPE cache layout and in-place rotation); on the GPU (`-m gpu`) the real kernels run.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig

from parrotlet.engine.models.llama import (
    FusedKernels,
    LlamaForCausalLM,
    apply_rope,
    load_fused_kernels,
)
from parrotlet.engine.models.loader import load_model
from parrotlet_kernels import triton_linear

from .test_llama import LLAMA3_ROPE, SMALL, make_checkpoint, make_hf_config, make_prompts


def torch_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def torch_silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def torch_apply_rope(positions, q, k, head_dim, cos_sin) -> None:
    cos, sin = cos_sin[positions].chunk(2, dim=-1)  # [num_tokens, head_dim // 2] each
    cos = torch.cat((cos, cos), dim=-1).unsqueeze(1).to(q.dtype)  # [num_tokens, 1, head_dim]
    sin = torch.cat((sin, sin), dim=-1).unsqueeze(1).to(q.dtype)
    q.copy_(apply_rope(q, cos, sin))
    k.copy_(apply_rope(k, cos, sin))


TORCH_KERNELS = FusedKernels(
    rmsnorm=torch_rmsnorm,
    apply_rope=torch_apply_rope,
    linear=triton_linear.linear,
    linear_into_norm=triton_linear.linear_into_norm,
    norm_linear=partial(triton_linear.norm_linear, rmsnorm=torch_rmsnorm),
    norm_swiglu=partial(
        triton_linear.norm_swiglu, rmsnorm=torch_rmsnorm, silu_and_mul=torch_silu_and_mul
    ),
)


class DenseCausalAttention:
    """A test stand-in for an attention backend: one sequence, no KV cache, causal SDPA."""

    def forward(self, q, k, v, layer):  # [num_tokens, heads, head_dim] each
        rep = q.shape[1] // k.shape[1]
        q, k, v = (
            x.transpose(0, 1) for x in (q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1))
        )
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(0, 1)


PROMPTS = make_prompts(SMALL["vocab_size"])


class RotatingAttention(DenseCausalAttention):
    """An attention that applies RoPE itself (as the Triton graph decode does)."""

    applies_rope = True

    def forward(self, q, k, v, layer, rope=None):
        assert rope is not None, "the model hands RoPE over to an attention that applies it"
        q, k = q.clone(), k.clone()
        torch_apply_rope(rope.positions, q, k, q.shape[-1], rope.cos_sin)
        return super().forward(q, k, v, layer)


def logits_of(
    model: LlamaForCausalLM,
    prompts: list[torch.Tensor],
    kernels: FusedKernels | None = None,
    attn: DenseCausalAttention | None = None,
) -> list[torch.Tensor]:
    device = model.embed_tokens.weight.device
    attn = attn or DenseCausalAttention()
    with torch.no_grad():
        return [
            model.compute_logits(
                model(p.to(device), torch.arange(len(p), device=device), attn, kernels), kernels
            )
            for p in prompts
        ]


@pytest.mark.parametrize("case", ["llama3_rope", "qwen3", "llama_attention_bias"])
def test_fused_path_matches_plain_path(tmp_path: Path, case: str) -> None:
    make_checkpoint(tmp_path, make_hf_config(case))
    model, _ = load_model(tmp_path)
    expected = logits_of(model, PROMPTS)
    for ours, theirs in zip(logits_of(model, PROMPTS, TORCH_KERNELS), expected, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_attention_that_applies_rope_gets_q_and_k_unrotated(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, make_hf_config("llama3_rope"))
    model, _ = load_model(tmp_path)
    expected = logits_of(model, PROMPTS)

    def no_rope(*args) -> None:
        raise AssertionError("the model must leave RoPE to the attention")

    kernels = dataclasses.replace(TORCH_KERNELS, apply_rope=no_rope)
    actual = logits_of(model, PROMPTS, kernels, RotatingAttention())
    for ours, theirs in zip(actual, expected, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_cpu_engine_uses_neither_fused_kernels_nor_graphs(tmp_path: Path) -> None:
    from ..helpers import make_checkpoint as make_engine_checkpoint
    from ..helpers import make_engine

    make_engine_checkpoint("llama", tmp_path)
    engine = make_engine(tmp_path)
    assert engine.config.cuda_graphs
    assert engine.runner.kernels is None
    assert engine.runner.graphs is None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("small_batch_linear", [True, False])
def test_fused_kernels_are_as_accurate_as_plain_path(
    tmp_path: Path, dtype: torch.dtype, small_batch_linear: bool
):
    """Against the float32 model, the fused 16-bit logits err no more than the plain ones."""
    kernels = load_fused_kernels(small_batch_linear)
    assert kernels is not None, "flashinfer is not installed"
    hd128 = {**SMALL, "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 2}
    make_checkpoint(tmp_path, LlamaConfig(**hd128, rope_parameters=dict(LLAMA3_ROPE)))
    cuda = torch.device("cuda")
    exact = logits_of(load_model(tmp_path, dtype=torch.float32, device=cuda)[0], PROMPTS)
    model, _ = load_model(tmp_path, dtype=dtype, device=cuda)
    plain = logits_of(model, PROMPTS)
    fused = logits_of(model, PROMPTS, kernels)
    for e, p, f in zip(exact, plain, fused, strict=True):
        plain_err, fused_err = (p - e).abs().max().item(), (f - e).abs().max().item()
        assert fused_err <= 1.5 * plain_err + 1e-2, (fused_err, plain_err)
