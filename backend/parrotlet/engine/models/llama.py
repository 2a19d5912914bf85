"""The Llama family (Llama, Mistral, Qwen2, Qwen3) in plain torch over a flat varlen batch.

The model runner calls `forward` once per engine step; each layer hands q/k/v to the attention
backend. On CUDA in 16-bit the runner passes fused kernels (`FusedKernels`: flashinfer's
elementwise kernels, parrotlet's small-batch linear kernel); without them the plain torch path
runs, the reference and the only path on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from parrotlet.engine.models.config import ModelConfig, RopeScaling
from parrotlet_kernels import triton_linear
from parrotlet_kernels.interface import AttentionBackend, Rope
from parrotlet_kernels.triton_linear import NormedRows


@dataclass(frozen=True)
class FusedKernels:
    """Fused kernels for a layer's elementwise work and small-batch matmuls (CUDA, 16-bit).

    `rmsnorm(x, weight, eps)` returns the norm; `apply_rope(positions, q, k, head_dim,
    cos_sin_cache)` rotates q and k in place (rotate-half); `linear(x, weight, bias,
    residual=None)` is `F.linear` plus the residual; `linear_into_norm(x, weight, bias, *,
    residual, norm_weight, eps)` is the same as a `triton_linear.NormedRows`, which
    `norm_linear(x, weight, bias)` and `norm_swiglu(x, gate_up_weight)` read: `F.linear` and
    `silu(gate) * up` of `F.linear(x, gate_up_weight)` on the rows' RMSNorm. They compute in
    float32 and round once, so outputs differ from the torch path in the last bits.
    """

    rmsnorm: Callable[..., torch.Tensor]
    apply_rope: Callable[..., None]
    linear: Callable[..., torch.Tensor]
    linear_into_norm: Callable[..., NormedRows]
    norm_linear: Callable[..., torch.Tensor]
    norm_swiglu: Callable[..., torch.Tensor]


def load_fused_kernels(
    small_batch_linear: bool = True, programmatic_launch: bool = True
) -> FusedKernels | None:
    """flashinfer's elementwise kernels, or None where flashinfer is not installed.

    With `small_batch_linear`, linear layers of at most `triton_linear.MAX_ROWS` rows (decode
    steps) run parrotlet's weight-streaming Triton kernel with SwiGLU's product, the residual add
    and the RMSNorms between layers fused into it; otherwise cuBLAS with flashinfer's rmsnorm
    and silu_and_mul. `programmatic_launch` launches the Triton kernel with PDL where the GPU
    supports it (parrotlet_kernels/programmatic_launch.py).
    """
    try:
        import flashinfer
    except ImportError:
        return None
    options = dict(use_triton=small_batch_linear, programmatic=programmatic_launch)
    return FusedKernels(
        rmsnorm=flashinfer.rmsnorm,
        apply_rope=flashinfer.apply_rope_with_cos_sin_cache_inplace,
        linear=partial(triton_linear.linear, **options),
        linear_into_norm=partial(triton_linear.linear_into_norm, **options),
        norm_linear=partial(triton_linear.norm_linear, rmsnorm=flashinfer.rmsnorm, **options),
        norm_swiglu=partial(
            triton_linear.norm_swiglu,
            rmsnorm=flashinfer.rmsnorm,
            silu_and_mul=flashinfer.silu_and_mul,
            **options,
        ),
    )


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 and cast back, exactly as Hugging Face's LlamaRMSNorm."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """Inverse frequencies `[head_dim // 2]` with linear or llama3 scaling, as transformers does."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (theta**exponents)  # [head_dim // 2]
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """cos/sin for every position up to max_position_embeddings, built lazily per device."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        self.theta = config.rope_theta
        self.scaling = config.rope_scaling
        self.max_positions = config.max_position_embeddings
        self._cache: torch.Tensor | None = None  # [max_positions, 2, head_dim] float32
        self._fused_cache: torch.Tensor | None = None  # [max_positions, head_dim] float32

    def _freqs(self, device: torch.device) -> torch.Tensor:
        inv_freq = rope_inv_freq(self.head_dim, self.theta, self.scaling).to(device)
        positions = torch.arange(self.max_positions, device=device, dtype=torch.float32)
        return torch.outer(positions, inv_freq)  # [max_positions, head_dim // 2]

    def _build(self, device: torch.device) -> torch.Tensor:
        freqs = self._freqs(device)
        emb = torch.cat((freqs, freqs), dim=-1)  # [max_positions, head_dim]
        return torch.stack((emb.cos(), emb.sin()), dim=1)  # [max_positions, 2, head_dim]

    def cos_sin_cache(self, device: torch.device) -> torch.Tensor:
        """`[max_positions, head_dim]` float32: cos, then sin, of each frequency (flashinfer's)."""
        if self._fused_cache is None or self._fused_cache.device != device:
            freqs = self._freqs(device)
            self._fused_cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1)
        return self._fused_cache

    def forward(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cache is None or self._cache.device != positions.device:
            self._cache = self._build(positions.device)
        cos_sin = self._cache[positions].to(dtype)  # [num_tokens, 2, head_dim]
        return cos_sin[:, 0].unsqueeze(1), cos_sin[:, 1].unsqueeze(1)  # [num_tokens, 1, head_dim]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (HF, non-interleaved) on `[num_tokens, heads, head_dim]`."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    """Fused qkv projection, optional q/k RMSNorm, RoPE, then the paged attention backend."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.head_dim = config.head_dim
        self.sizes = [config.q_size, config.kv_size, config.kv_size]
        qkv_size = config.q_size + 2 * config.kv_size
        self.qkv_proj = nn.Linear(config.hidden_size, qkv_size, bias=config.attention_bias)
        self.o_proj = nn.Linear(config.q_size, config.hidden_size, bias=config.o_proj_bias)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn: AttentionBackend
    ) -> torch.Tensor:
        num_tokens = x.shape[0]
        q, k, v = self.qkv_proj(x).split(self.sizes, dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)  # [num_tokens, num_heads, head_dim]
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)  # [num_tokens, kv_heads, head_dim]
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)  # [num_tokens, kv_heads, head_dim]
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = attn.forward(q, k, v, self.layer_idx)  # [num_tokens, num_heads, head_dim]
        return self.o_proj(out.reshape(num_tokens, -1))  # [num_tokens, hidden]

    def forward_fused(
        self,
        x: NormedRows,  # the residual stream [num_tokens, hidden] into the input norm
        next_norm: RMSNorm,
        positions: torch.Tensor,  # [num_tokens]
        cos_sin: torch.Tensor,  # [max_positions, head_dim] float32
        attn: AttentionBackend,
        kernels: FusedKernels,
    ) -> NormedRows:  # [num_tokens, hidden] into next_norm
        """The rows plus `forward` of their norm, as rows into `next_norm`: the norm runs inside
        the qkv launch, RoPE in place in one kernel and the residual add inside o_proj's."""
        num_tokens = x.rows.shape[0]
        qkv = kernels.norm_linear(x, self.qkv_proj.weight, self.qkv_proj.bias)
        q, k, v = qkv.split(self.sizes, dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)  # [num_tokens, num_heads, head_dim]
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)  # [num_tokens, kv_heads, head_dim]
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)  # [num_tokens, kv_heads, head_dim]
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if getattr(attn, "applies_rope", False):  # the attention kernel rotates q and k
            out = attn.forward(q, k, v, self.layer_idx, rope=Rope(positions, cos_sin))
        else:
            kernels.apply_rope(positions, q, k, self.head_dim, cos_sin)
            out = attn.forward(q, k, v, self.layer_idx)  # [num_tokens, num_heads, head_dim]
        out = out.reshape(num_tokens, -1)  # [num_tokens, q_size]
        return kernels.linear_into_norm(
            out, self.o_proj.weight, self.o_proj.bias, residual=x.rows,
            norm_weight=next_norm.weight, eps=next_norm.eps,
        )  # fmt: skip


class MLP(nn.Module):
    """SwiGLU with gate and up fused into one matmul."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)  # [num_tokens, intermediate] each
        return self.down_proj(F.silu(gate) * up)  # [num_tokens, hidden]

    def forward_fused(self, x: NormedRows, next_norm: RMSNorm, kernels: FusedKernels) -> NormedRows:
        """The rows plus `forward` of their norm, as rows into `next_norm`: the norm runs inside
        the gate_up launch and the residual add inside down's."""
        hidden = kernels.norm_swiglu(x, self.gate_up_proj.weight)  # [num_tokens, intermediate]
        return kernels.linear_into_norm(
            hidden, self.down_proj.weight, residual=x.rows,
            norm_weight=next_norm.weight, eps=next_norm.eps,
        )  # fmt: skip


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn: AttentionBackend
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn)
        return x + self.mlp(self.post_attention_layernorm(x))  # [num_tokens, hidden]

    def forward_fused(
        self,
        x: NormedRows,  # [num_tokens, hidden] into this layer's input norm
        next_norm: RMSNorm,  # the next layer's input norm, or the model's final one
        positions: torch.Tensor,
        cos_sin: torch.Tensor,
        attn: AttentionBackend,
        kernels: FusedKernels,
    ) -> NormedRows:
        """`forward` with each norm fused into the projection after it and each residual add
        into the projection before it; the output comes as rows into `next_norm`."""
        mid_norm = self.post_attention_layernorm
        x = self.self_attn.forward_fused(x, mid_norm, positions, cos_sin, attn, kernels)
        return self.mlp.forward_fused(x, next_norm, kernels)


class LlamaForCausalLM(nn.Module):
    """A decoder-only Llama-family model over a flat batch of tokens (no batch dimension).

    Parameters mirror Hugging Face names except the fused `qkv_proj` and `gate_up_proj`; use
    `load_weights` with Hugging Face names to fill them.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rotary = RotaryEmbedding(config)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: AttentionBackend,
        kernels: FusedKernels | None = None,
    ) -> torch.Tensor:
        """Hidden states after the final norm, `[num_tokens, hidden]`; attn must be planned.

        With `kernels` (CUDA, 16-bit) norms, residual adds, SwiGLU, RoPE and matmuls run fused.
        """
        hidden = self.embed_tokens(input_ids)  # [num_tokens, hidden]
        if kernels is not None:
            return self._forward_fused(hidden, positions, attn, kernels)
        cos, sin = self.rotary(positions, hidden.dtype)  # [num_tokens, 1, head_dim] each
        for layer in self.layers:
            hidden = layer(hidden, cos, sin, attn)
        return self.norm(hidden)

    def _forward_fused(
        self,
        hidden: torch.Tensor,  # [num_tokens, hidden]
        positions: torch.Tensor,  # [num_tokens]
        attn: AttentionBackend,
        kernels: FusedKernels,
    ) -> torch.Tensor:
        cos_sin = self.rotary.cos_sin_cache(hidden.device)  # [max_positions, head_dim]
        first = self.layers[0].input_layernorm
        x = NormedRows(hidden, first.weight, first.eps)
        next_norms = [layer.input_layernorm for layer in self.layers[1:]] + [self.norm]
        for layer, next_norm in zip(self.layers, next_norms, strict=True):
            x = layer.forward_fused(x, next_norm, positions, cos_sin, attn, kernels)
        return x.normed(kernels.rmsnorm)  # the final norm's (the last layer's next_norm)

    def compute_logits(
        self, hidden: torch.Tensor, kernels: FusedKernels | None = None
    ) -> torch.Tensor:
        """float32 logits `[num_rows, vocab]` for the given hidden rows `[num_rows, hidden]`."""
        linear = F.linear if kernels is None else kernels.linear
        return linear(hidden, self.lm_head.weight).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy Hugging Face-named tensors into the (possibly fused) parameters.

        Raises ValueError on an unknown name, a shape mismatch, or a parameter left unfilled.
        The output head is tied to the input embedding when the config says so or when the
        checkpoint has no `lm_head.weight`.
        """
        targets = self._weight_targets()
        seen: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name or (
                name == "lm_head.weight" and self.config.tie_word_embeddings
            ):
                continue
            if name not in targets:
                raise ValueError(f"unexpected weight {name!r} for {self.config.architecture}")
            param, rows = targets[name]
            dest = param.data if rows is None else param.data[rows]
            if dest.shape != tensor.shape:
                raise ValueError(
                    f"weight {name!r} has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}"
                )
            dest.copy_(tensor)
            seen.add(name)
        self._finish_loading(set(targets) - seen)

    def _finish_loading(self, missing: set[str]) -> None:
        if self.config.tie_word_embeddings or missing == {"lm_head.weight"}:
            self.lm_head.weight = self.embed_tokens.weight
            missing.discard("lm_head.weight")
        if missing:
            raise ValueError(f"checkpoint is missing weights: {sorted(missing)[:8]}")

    def _weight_targets(self) -> dict[str, tuple[nn.Parameter, slice | None]]:
        """Hugging Face name -> (parameter, its rows inside a fused parameter or None)."""
        cfg = self.config
        targets: dict[str, tuple[nn.Parameter, slice | None]] = {
            "model.embed_tokens.weight": (self.embed_tokens.weight, None),
            "model.norm.weight": (self.norm.weight, None),
        }
        if not cfg.tie_word_embeddings:
            targets["lm_head.weight"] = (self.lm_head.weight, None)
        q, kv, inter = cfg.q_size, cfg.kv_size, cfg.intermediate_size
        for i, layer in enumerate(self.layers):
            prefix = f"model.layers.{i}."
            for name, param in layer.named_parameters():
                if "qkv_proj" not in name and "gate_up_proj" not in name:
                    targets[prefix + name] = (param, None)
            qkv = layer.self_attn.qkv_proj
            for kind in ("weight", "bias") if cfg.attention_bias else ("weight",):
                fused = getattr(qkv, kind)
                targets[f"{prefix}self_attn.q_proj.{kind}"] = (fused, slice(0, q))
                targets[f"{prefix}self_attn.k_proj.{kind}"] = (fused, slice(q, q + kv))
                targets[f"{prefix}self_attn.v_proj.{kind}"] = (fused, slice(q + kv, q + 2 * kv))
            gate_up = layer.mlp.gate_up_proj.weight
            targets[f"{prefix}mlp.gate_proj.weight"] = (gate_up, slice(0, inter))
            targets[f"{prefix}mlp.up_proj.weight"] = (gate_up, slice(inter, 2 * inter))
        return targets
