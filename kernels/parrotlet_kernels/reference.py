"""The torch reference attention backend: the engine's CPU path and the oracle for fast kernels.

The ModelRunner calls plan() once per step; each attention layer of the model calls forward().
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from parrotlet_kernels.attention_math import (
    attention_with_lse,
    fold_query_groups,
    merge_attention_states,
    unfold_query_groups,
)
from parrotlet_kernels.interface import AttentionMetadata, AttentionSpec
from parrotlet_kernels.validation import query_starts_host, validate_metadata


@dataclass(frozen=True)
class _Segment:
    """`batch` sequences with `num_queries` query tokens each, every one over its own KV span.

    KV rows index a layer cache viewed as `[num_blocks * 2 * block_size, num_kv_heads, head_dim]`;
    padding rows (decodes of unequal length) read block 0 and are masked out.
    """

    token_index: torch.Tensor  # [batch * num_queries] int64, rows of the step's query batch
    kv_rows: torch.Tensor  # [2 * batch * kv_len] int64, key rows then value rows
    batch: int
    num_queries: int
    kv_len: int
    mask: torch.Tensor | None  # [batch, num_queries, kv_len] bool, True = attend; None = all


@dataclass(frozen=True)
class _Prefix:
    """All query tokens of one PrefixGroup against the group's shared prefix KV (no mask)."""

    token_index: torch.Tensor  # [group_tokens] int64
    kv_rows: torch.Tensor  # [2 * prefix_len] int64, key rows then value rows
    prefix_len: int


@dataclass(frozen=True)
class _Plan:
    """Everything forward() needs for one step, built once by plan()."""

    num_tokens: int
    write_rows: torch.Tensor  # [2, num_tokens] int64, key / value rows of this step's tokens
    plain: tuple[_Segment, ...]  # sequences outside any prefix group
    suffixes: tuple[_Segment, ...]  # grouped sequences, over their KV after the shared prefix
    prefixes: tuple[_Prefix, ...]  # one per prefix group


class TorchReferenceBackend:
    """Paged attention in plain torch, exact up to float32 rounding; see AttentionBackend.

    plan() validates the metadata (reading device tensors: this is the oracle, not the fast path)
    and precomputes every gather index and mask. forward() then does, per layer: two index_copy_
    writes; one gather + one SDPA for all decodes outside prefix groups; one gather + SDPA per
    prefill sequence; and for each prefix group one unmasked prefix matmul for all its query
    tokens, merged by log-sum-exp with each member's suffix attention. bf16/fp16 inputs are
    computed in float32; the output has the dtype of `q`.
    """

    def __init__(self, spec: AttentionSpec, kv_caches: Sequence[torch.Tensor]) -> None:
        if len(kv_caches) != spec.num_layers:
            raise ValueError(f"got {len(kv_caches)} kv_caches, spec has {spec.num_layers} layers")
        for layer, cache in enumerate(kv_caches):
            if tuple(cache.shape) != spec.kv_cache_shape or cache.dtype != spec.dtype:
                raise ValueError(
                    f"kv_caches[{layer}] is {tuple(cache.shape)} {cache.dtype}, "
                    f"expected {spec.kv_cache_shape} {spec.dtype}"
                )
            if not cache.is_contiguous():
                raise ValueError(f"kv_caches[{layer}] must be contiguous")
        self.spec = spec
        self.kv_caches = kv_caches
        self._rows = [c.view(-1, spec.num_kv_heads, spec.head_dim) for c in kv_caches]
        low_precision = spec.dtype in (torch.bfloat16, torch.float16)
        self._compute_dtype = torch.float32 if low_precision else spec.dtype
        self._plan: _Plan | None = None

    def plan(self, metadata: AttentionMetadata) -> None:
        """Validate `metadata` (ValueError if inconsistent) and precompute this step's indices."""
        validate_metadata(metadata, self.spec)
        self._plan = _Planner(metadata, self.spec).build()

    def forward(
        self,
        q: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        k: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        v: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        layer: int,
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
        """Write k/v at the planned slots of `layer`'s cache, then attend every query causally."""
        plan = self._checked_plan(q)
        rows = self._rows[layer]  # [num_blocks * 2 * block_size, num_kv_heads, head_dim]
        rows.index_copy_(0, plan.write_rows[0], k.to(rows.dtype))
        rows.index_copy_(0, plan.write_rows[1], v.to(rows.dtype))
        out = q.new_empty(q.shape, dtype=self._compute_dtype)  # [num_tokens, num_heads, head_dim]
        for segment in plan.plain:
            out.index_copy_(0, segment.token_index, self._attend_plain(q, rows, segment))
        if plan.prefixes:
            self._attend_cascade(q, rows, plan, out)
        return out.to(q.dtype)

    def _checked_plan(self, q: torch.Tensor) -> _Plan:
        if self._plan is None:
            raise RuntimeError("forward() called before plan()")
        if q.shape[0] != self._plan.num_tokens:
            raise ValueError(f"q has {q.shape[0]} tokens, the plan has {self._plan.num_tokens}")
        return self._plan

    def _gather_kv(
        self, rows: torch.Tensor, kv_rows: torch.Tensor, batch: int, kv_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values `[batch, kv_len, num_kv_heads, head_dim]` in the compute dtype."""
        kv = rows.index_select(0, kv_rows).to(self._compute_dtype)  # [2 * batch * kv_len, kvh, hd]
        kv = kv.view(2, batch, kv_len, self.spec.num_kv_heads, self.spec.head_dim)
        return kv[0], kv[1]

    def _queries(self, q: torch.Tensor, token_index: torch.Tensor) -> torch.Tensor:
        return q.index_select(0, token_index).to(self._compute_dtype)  # [n, num_heads, head_dim]

    def _attend_plain(self, q: torch.Tensor, rows: torch.Tensor, seg: _Segment) -> torch.Tensor:
        """SDPA for one segment, KV heads shared by folding each query group into the query axis."""
        b, nq, kv_heads = seg.batch, seg.num_queries, self.spec.num_kv_heads
        group = self.spec.num_heads // kv_heads
        query = self._queries(q, seg.token_index).view(b, nq, self.spec.num_heads, -1)
        keys, values = self._gather_kv(rows, seg.kv_rows, b, seg.kv_len)  # [b, kv_len, kvh, hd]
        mask = None
        if seg.mask is not None:
            mask = seg.mask[:, None, None].expand(b, 1, group, nq, seg.kv_len)
            mask = mask.reshape(b, 1, group * nq, seg.kv_len)  # [b, 1, group * nq, kv_len]
        out = F.scaled_dot_product_attention(
            fold_query_groups(query, kv_heads),  # [b, kvh, group * nq, hd]
            keys.transpose(1, 2),  # [b, kvh, kv_len, hd]
            values.transpose(1, 2),  # [b, kvh, kv_len, hd]
            attn_mask=mask,
            scale=self.spec.scale,
        )  # [b, kvh, group * nq, hd]
        return unfold_query_groups(out, nq).flatten(0, 1)  # [b * nq, num_heads, hd]

    def _attend_cascade(
        self, q: torch.Tensor, rows: torch.Tensor, plan: _Plan, out: torch.Tensor
    ) -> None:
        """Suffix attention with LSE for grouped tokens, then each shared prefix once, merged."""
        lse = q.new_empty(q.shape[:2], dtype=self._compute_dtype)  # [num_tokens, num_heads]
        for seg in plan.suffixes:
            keys, values = self._gather_kv(rows, seg.kv_rows, seg.batch, seg.kv_len)
            query = self._queries(q, seg.token_index).view(
                seg.batch, seg.num_queries, -1, keys.shape[-1]
            )
            seg_out, seg_lse = attention_with_lse(query, keys, values, self.spec.scale, seg.mask)
            out.index_copy_(0, seg.token_index, seg_out.flatten(0, 1))
            lse.index_copy_(0, seg.token_index, seg_lse.flatten(0, 1))
        for prefix in plan.prefixes:
            idx = prefix.token_index
            keys, values = self._gather_kv(rows, prefix.kv_rows, 1, prefix.prefix_len)
            prefix_out, prefix_lse = attention_with_lse(
                self._queries(q, idx), keys[0], values[0], self.spec.scale
            )  # [group_tokens, num_heads, head_dim], [group_tokens, num_heads]
            merged, _ = merge_attention_states(
                prefix_out, prefix_lse, out.index_select(0, idx), lse.index_select(0, idx)
            )
            out.index_copy_(0, idx, merged)


class _Planner:
    """Turns one step's validated metadata into a _Plan (host loops over sequences, tensor math)."""

    def __init__(self, metadata: AttentionMetadata, spec: AttentionSpec) -> None:
        self.md = metadata
        self.block_size = spec.block_size
        self.device = metadata.block_tables.device
        self.starts = query_starts_host(metadata)
        self.tables = metadata.block_tables.long()  # [num_seqs, max_blocks]
        self.kv_start = [0] * metadata.num_seqs  # first KV position each sequence attends itself
        for group in metadata.prefix_groups:
            for i in group.seq_indices:
                self.kv_start[i] = group.num_blocks * spec.block_size

    def build(self) -> _Plan:
        grouped = {i for group in self.md.prefix_groups for i in group.seq_indices}
        ungrouped = [i for i in range(self.md.num_seqs) if i not in grouped]
        return _Plan(
            num_tokens=self.md.num_tokens,
            write_rows=self._write_rows(),
            plain=self._segments(ungrouped),
            suffixes=self._segments(sorted(grouped)),
            prefixes=tuple(
                self._prefix(g.seq_indices, g.num_blocks) for g in self.md.prefix_groups
            ),
        )

    def _write_rows(self) -> torch.Tensor:
        slots = self.md.slot_mapping.long()  # [num_tokens]
        keys = self._slot_rows(slots // self.block_size, slots % self.block_size)
        return torch.stack([keys, keys + self.block_size])  # [2, num_tokens]

    def _slot_rows(self, blocks: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Key row of (block, offset) in a cache viewed as rows; its value row is + block_size."""
        return blocks * (2 * self.block_size) + offsets

    def _segments(self, seqs: list[int]) -> tuple[_Segment, ...]:
        """All decodes (query_len 1) of `seqs` as one padded batch, then one segment per prefill."""
        decodes = [i for i in seqs if self.md.query_lens_host[i] == 1]
        prefills = [[i] for i in seqs if self.md.query_lens_host[i] > 1]
        batches = ([decodes] if decodes else []) + prefills
        return tuple(self._segment(batch) for batch in batches)

    def _segment(self, seqs: list[int]) -> _Segment:
        nq = self.md.query_lens_host[seqs[0]]
        kv_lens = [self.md.seq_lens_host[i] - self.kv_start[i] for i in seqs]
        kv_len = max(kv_lens)
        tensor = self._tensor
        offsets = torch.arange(kv_len, device=self.device)  # [kv_len]
        kv_pos = tensor([self.kv_start[i] for i in seqs])[:, None] + offsets  # [b, kv_len]
        valid = offsets[None, :] < tensor(kv_lens)[:, None]  # [b, kv_len]
        kv_rows = self._kv_rows(tensor(seqs), kv_pos.masked_fill(~valid, 0)).masked_fill(~valid, 0)
        seq_lens = tensor([self.md.seq_lens_host[i] for i in seqs])
        q_pos = seq_lens[:, None] - nq + torch.arange(nq, device=self.device)  # [b, nq]
        mask = valid[:, None, :] & (kv_pos[:, None, :] <= q_pos[:, :, None])  # [b, nq, kv_len]
        starts = tensor([self.starts[i] for i in seqs])
        return _Segment(
            token_index=(starts[:, None] + torch.arange(nq, device=self.device)).flatten(),
            kv_rows=torch.cat([kv_rows, kv_rows + self.block_size]).flatten(),
            batch=len(seqs),
            num_queries=nq,
            kv_len=kv_len,
            mask=mask if nq > 1 or min(kv_lens) < kv_len else None,
        )

    def _prefix(self, seqs: tuple[int, ...], num_blocks: int) -> _Prefix:
        prefix_len = num_blocks * self.block_size
        token_index = torch.cat(
            [torch.arange(self.starts[i], self.starts[i + 1], device=self.device) for i in seqs]
        )  # [group_tokens]
        positions = torch.arange(prefix_len, device=self.device)[None, :]  # [1, prefix_len]
        kv_rows = self._kv_rows(self._tensor([seqs[0]]), positions)  # [1, prefix_len]
        return _Prefix(
            token_index=token_index,
            kv_rows=torch.cat([kv_rows, kv_rows + self.block_size]).flatten(),
            prefix_len=prefix_len,
        )

    def _kv_rows(self, seqs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Key rows `[b, n]` of KV `positions` `[b, n]` of sequences `seqs` `[b]`."""
        blocks = self.tables[seqs].gather(1, positions // self.block_size)  # [b, n]
        return self._slot_rows(blocks, positions % self.block_size)

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)
