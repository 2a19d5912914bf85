"""The attention-backend interface: the engine plans once per step, each layer calls forward.

Every backend (torch reference, flashinfer) implements this; the engine's ModelRunner builds one
AttentionMetadata per step and the model's attention layers call `forward(q, k, v, layer)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class AttentionSpec:
    """Static shape of the attention and of the paged KV cache of one model.

    The KV cache of layer `l` is one tensor `[num_blocks, 2, block_size, num_kv_heads, head_dim]`
    (index 0 of dim 1 holds keys, 1 values): the NHD paged layout flashinfer uses.
    """

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    num_blocks: int
    dtype: torch.dtype
    device: torch.device

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )

    @property
    def scale(self) -> float:
        return self.head_dim**-0.5

    @property
    def kv_cache_shape(self) -> tuple[int, int, int, int, int]:
        return (self.num_blocks, 2, self.block_size, self.num_kv_heads, self.head_dim)

    @property
    def block_bytes(self) -> int:
        """KV bytes of one block of one layer."""
        return 2 * self.block_size * self.num_kv_heads * self.head_dim * self.dtype.itemsize

    def allocate_kv_cache(self) -> list[torch.Tensor]:
        """One zeroed cache tensor per layer."""
        return [
            torch.zeros(self.kv_cache_shape, dtype=self.dtype, device=self.device)
            for _ in range(self.num_layers)
        ]


@dataclass(frozen=True)
class PrefixGroup:
    """Sequences of a batch whose block tables begin with the same `num_blocks` block ids.

    Every query token of these sequences sits at a position >= num_blocks * block_size, so the
    shared prefix can be attended once for all of them (then each suffix, merged by log-sum-exp).
    """

    seq_indices: tuple[int, ...]
    num_blocks: int


@dataclass(frozen=True)
class AttentionMetadata:
    """Everything a backend needs for one engine step; built once per step by the ModelRunner.

    The batch is a flat run of `num_tokens` query tokens; sequence `i` owns query tokens
    `query_start_loc[i]:query_start_loc[i+1]`, which are the last `query_lens[i]` of its
    `seq_lens[i]` tokens. Its KV lives in the blocks
    `block_tables[i, : ceil(seq_lens[i] / block_size)]`.
    The host tuples mirror the device tensors so backends can plan without a device sync.
    """

    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    seq_lens: torch.Tensor  # [num_seqs] int32, KV length including this step's tokens
    block_tables: torch.Tensor  # [num_seqs, max_blocks_per_seq] int32, padded with 0
    slot_mapping: torch.Tensor  # [num_tokens] int64, block_id * block_size + offset, new tokens
    query_lens_host: tuple[int, ...]
    seq_lens_host: tuple[int, ...]
    prefix_groups: tuple[PrefixGroup, ...] = ()

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_host)

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens_host)


@dataclass(frozen=True, eq=False)  # holds tensors: compared by identity
class Rope:
    """RoPE left to the attention: rotate-half at `positions` with flashinfer's cos/sin cache."""

    positions: torch.Tensor  # [num_tokens] int
    cos_sin: torch.Tensor  # [max_positions, head_dim] float32: cos, then sin, of each frequency


class AttentionBackend(Protocol):
    """Paged attention over the KV cache of every layer.

    `plan` is called once per step on the host; `forward` once per layer. `forward` first writes
    this step's keys and values into the cache at `metadata.slot_mapping`, then attends every query
    token causally over its sequence's cached tokens. A backend whose `applies_rope` is true (the
    Triton graph decode) takes q and k unrotated with `forward(..., rope=Rope(...))` and rotates
    them itself, saving the model's RoPE launch.
    """

    spec: AttentionSpec
    kv_caches: Sequence[torch.Tensor]

    def plan(self, metadata: AttentionMetadata) -> None: ...

    def forward(
        self,
        q: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        k: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        v: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        layer: int,
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
        ...
