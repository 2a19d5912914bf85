"""Piecewise graphs on CPU: the token-count buckets, and StagedAttention's padded forward.

CPU cannot capture CUDA graphs (test_piecewise_graphs_gpu.py replays them), but what the pieces
compute can be run here: the model's forward over a padded batch through StagedAttention, with
attention run between the pieces on the real rows only, equals the plain forward of the real
rows, and writes exactly their keys and values into the KV cache (the padding rows none).
"""

from __future__ import annotations

import pytest
import torch

from parrotlet.bench.setup import random_model
from parrotlet.engine.piecewise_graphs import (
    PiecewiseGraphRunner,
    StagedAttention,
    piecewise_token_sizes,
)
from parrotlet_kernels.interface import AttentionSpec
from parrotlet_kernels.reference import TorchReferenceBackend

from ..kernels.attention_helpers import make_block_tables, make_metadata

VOCAB, BLOCK, NUM_BLOCKS, PADDED = 64, 16, 32, 32
SEQS = [(33, 13), (18, 1), (45, 1)]  # (seq_len, query_len): a prompt chunk over 20 cached
# tokens and two decoding rows, 15 tokens padded to 32


def test_token_sizes_are_multiples_of_16_up_to_the_limit():
    assert piecewise_token_sizes(40) == (16, 32, 40)
    assert piecewise_token_sizes(8) == (8,)
    assert piecewise_token_sizes(512) == tuple(range(16, 513, 16))
    with pytest.raises(ValueError, match="max_tokens must be >= 1, got 0"):
        piecewise_token_sizes(0)


def make_setup():
    model = random_model("tiny-random", VOCAB, torch.float32, torch.device("cpu"))
    c = model.config
    spec = AttentionSpec(c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, BLOCK,
                         NUM_BLOCKS, torch.float32, torch.device("cpu"))  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(spec.kv_cache_shape, generator=gen) for _ in range(c.num_layers)]
    tables = make_block_tables(gen, [n for n, _ in SEQS], BLOCK, NUM_BLOCKS)
    metadata = make_metadata([(t, n, q) for t, (n, q) in zip(tables, SEQS, strict=True)], BLOCK)
    ids = torch.randint(1, VOCAB, (metadata.num_tokens,), generator=gen)
    positions = torch.cat([torch.arange(n - q, n) for n, q in SEQS])
    return model, spec, start, metadata, ids, positions


def test_padded_staged_forward_equals_the_plain_forward():
    model, spec, start, metadata, ids, positions = make_setup()
    n = metadata.num_tokens
    plain = TorchReferenceBackend(spec, [x.clone() for x in start])
    plain.plan(metadata)
    want = model(ids, positions, plain, None)  # [n, hidden]

    attention = TorchReferenceBackend(spec, [x.clone() for x in start])
    attention.plan(metadata)
    staged = StagedAttention(spec, PADDED)
    staged.between = lambda layer: staged.attend(attention, layer, n)
    padded_ids = torch.cat([ids, torch.full((PADDED - n,), 5)])
    padded_positions = torch.cat([positions, torch.full((PADDED - n,), 40)])
    got = model(padded_ids, padded_positions, staged, None)  # [PADDED, hidden]

    assert got.shape == (PADDED, model.config.hidden_size)
    torch.testing.assert_close(got[:n], want, atol=1e-5, rtol=1e-5)
    slots = metadata.slot_mapping.tolist()
    written = torch.zeros(NUM_BLOCKS * BLOCK, dtype=torch.bool)
    written[slots] = True
    for ours, theirs, before in zip(attention.kv_caches, plain.kv_caches, start, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        rows = ours.transpose(1, 2).reshape(NUM_BLOCKS * BLOCK, 2, -1)  # [slots, k/v, ...]
        untouched = before.transpose(1, 2).reshape(NUM_BLOCKS * BLOCK, 2, -1)
        assert torch.equal(rows[~written], untouched[~written]), "padding rows wrote KV"
        assert not torch.equal(rows[written], untouched[written])


def test_runner_refuses_a_step_longer_than_its_largest_size():
    model, spec, start, _, ids, positions = make_setup()
    runner = PiecewiseGraphRunner(model, TorchReferenceBackend(spec, start), max_tokens=8)
    assert runner.sizes == (8,) and runner.captured == ()
    with pytest.raises(ValueError, match="a step of 15 tokens exceeds the pieces' 8"):
        runner.forward(ids, positions)
