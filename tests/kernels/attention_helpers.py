"""Builders for attention-backend tests: specs, random paged caches, block tables, metadata."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from itertools import accumulate

import pytest
import torch

from parrotlet_kernels.interface import AttentionMetadata, AttentionSpec, PrefixGroup

# (block_table, seq_len, query_len) of one sequence
SeqSpec = tuple[Sequence[int], int, int]


def make_spec(
    num_heads: int = 6,
    num_kv_heads: int = 2,
    head_dim: int = 16,
    block_size: int = 4,
    num_blocks: int = 64,
    num_layers: int = 1,
    dtype: torch.dtype = torch.float32,
) -> AttentionSpec:
    return AttentionSpec(
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        block_size=block_size,
        num_blocks=num_blocks,
        dtype=dtype,
        device=torch.device("cpu"),
    )


def make_metadata(
    seqs: Sequence[SeqSpec],
    block_size: int,
    prefix_groups: Sequence[PrefixGroup] = (),
    extra_columns: int = 1,
) -> AttentionMetadata:
    """Metadata for sequences given as (block_table, seq_len, query_len), tables padded with 0."""
    width = max((len(table) for table, _, _ in seqs), default=0) + extra_columns
    tables = [list(table) + [0] * (width - len(table)) for table, _, _ in seqs]
    query_lens = tuple(query_len for _, _, query_len in seqs)
    seq_lens = tuple(seq_len for _, seq_len, _ in seqs)
    slots = [
        table[pos // block_size] * block_size + pos % block_size
        for table, seq_len, query_len in seqs
        for pos in range(seq_len - query_len, seq_len)
    ]
    return AttentionMetadata(
        query_start_loc=torch.tensor(list(accumulate(query_lens, initial=0)), dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=torch.tensor(tables, dtype=torch.int32).view(len(seqs), width),
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        query_lens_host=query_lens,
        seq_lens_host=seq_lens,
        prefix_groups=tuple(prefix_groups),
    )


def make_block_tables(
    generator: torch.Generator,
    seq_lens: Sequence[int],
    block_size: int,
    num_blocks: int,
    shared: Sequence[tuple[Sequence[int], int]] = (),
) -> list[list[int]]:
    """Shuffled, distinct block ids per sequence; `shared` = (members, num_blocks) prefixes."""
    pool = torch.randperm(num_blocks, generator=generator).tolist()
    tables: list[list[int]] = [[] for _ in seq_lens]
    for members, count in shared:
        prefix, pool = pool[:count], pool[count:]
        for i in members:
            tables[i] = list(prefix)
    for i, seq_len in enumerate(seq_lens):
        missing = -(-seq_len // block_size) - len(tables[i])
        tables[i] += pool[:missing]
        pool = pool[missing:]
    return tables


def make_batch(
    spec: AttentionSpec,
    seqs: Sequence[tuple[int, int]],
    groups: Sequence[tuple[Sequence[int], int]] = (),
    seed: int = 0,
) -> tuple[AttentionMetadata, list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random caches, q/k/v and metadata for (seq_len, query_len) sequences and prefix groups."""
    gen = torch.Generator().manual_seed(seed)
    seq_lens = [seq_len for seq_len, _ in seqs]
    tables = make_block_tables(gen, seq_lens, spec.block_size, spec.num_blocks, groups)
    prefix_groups = [PrefixGroup(tuple(members), count) for members, count in groups]
    metadata = make_metadata(
        [(t, s, q) for t, (s, q) in zip(tables, seqs, strict=True)], spec.block_size, prefix_groups
    )
    caches = [
        torch.randn(spec.kv_cache_shape, generator=gen).to(spec.dtype)
        for _ in range(spec.num_layers)
    ]
    n = metadata.num_tokens
    q = torch.randn(n, spec.num_heads, spec.head_dim, generator=gen).to(spec.dtype)
    k = torch.randn(n, spec.num_kv_heads, spec.head_dim, generator=gen).to(spec.dtype)
    v = torch.randn(n, spec.num_kv_heads, spec.head_dim, generator=gen).to(spec.dtype)
    return metadata, caches, q, k, v


requires_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed"
)


def run_under_triton_interpreter(code: str) -> None:
    """Run `code` in a fresh interpreter with TRITON_INTERPRET=1 (Triton kernels on CPU)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
