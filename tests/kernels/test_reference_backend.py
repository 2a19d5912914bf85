"""TorchReferenceBackend against a dense float64 oracle, plus its cascade and validation paths."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
import torch

from parrotlet_kernels.attention_math import attention_with_lse, merge_attention_states
from parrotlet_kernels.interface import AttentionMetadata, AttentionSpec, PrefixGroup
from parrotlet_kernels.reference import TorchReferenceBackend

from .attention_helpers import make_batch, make_metadata, make_spec

DECODE = [(1, 1), (7, 1), (16, 1), (33, 1), (50, 1)]
PREFILL = [(5, 5), (16, 16), (23, 23)]
CHUNKED = [(20, 8), (37, 5), (16, 16), (9, 2)]
MIXED = [(17, 1), (30, 6), (12, 12), (45, 1), (9, 3), (2, 1)]
HEADS = [(4, 4), (6, 2), (8, 2)]  # GQA ratios 1, 3, 4
TOL = {"atol": 1e-5, "rtol": 1e-5}  # float32 backend vs float64 oracle


def spec_for(
    seqs: Sequence[tuple[int, int]],
    heads: tuple[int, int] = (6, 2),
    block_size: int = 4,
    dtype: torch.dtype = torch.float32,
    num_layers: int = 1,
) -> AttentionSpec:
    needed = sum(-(-seq_len // block_size) for seq_len, _ in seqs)
    return make_spec(heads[0], heads[1], 16, block_size, needed + 8, num_layers, dtype)


def write_expected(
    cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor
) -> torch.Tensor:
    """The cache after writing token t's k/v at slots[t], done one token at a time."""
    expected = cache.clone()
    block_size = cache.shape[2]
    for t, slot in enumerate(slots.tolist()):
        expected[slot // block_size, 0, slot % block_size] = k[t]
        expected[slot // block_size, 1, slot % block_size] = v[t]
    return expected


def dense_attention(q: torch.Tensor, cache: torch.Tensor, md: AttentionMetadata) -> torch.Tensor:
    """Float64 causal attention per sequence over its gathered blocks; GQA by repeat_interleave."""
    block_size, num_kv_heads, head_dim = cache.shape[2], cache.shape[3], cache.shape[4]
    group = q.shape[1] // num_kv_heads
    out = torch.empty(q.shape, dtype=torch.float64)
    start = 0
    for i, (seq_len, query_len) in enumerate(
        zip(md.seq_lens_host, md.query_lens_host, strict=True)
    ):
        blocks = md.block_tables[i, : -(-seq_len // block_size)].long()
        kv = cache[blocks].double()  # [blocks, 2, block_size, kv_heads, head_dim]
        k = kv[:, 0].reshape(-1, num_kv_heads, head_dim)[:seq_len].repeat_interleave(group, 1)
        v = kv[:, 1].reshape(-1, num_kv_heads, head_dim)[:seq_len].repeat_interleave(group, 1)
        qi = q[start : start + query_len].double()
        scores = torch.einsum("qhd,khd->hqk", qi, k) * head_dim**-0.5
        q_pos = torch.arange(seq_len - query_len, seq_len)
        allowed = torch.arange(seq_len)[None, :] <= q_pos[:, None]
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        out[start : start + query_len] = torch.einsum("hqk,khd->qhd", probs, v)
        start += query_len
    return out


def check(
    spec: AttentionSpec,
    md: AttentionMetadata,
    caches: list[torch.Tensor],
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> torch.Tensor:
    """Plan + forward layer 0 on a copy of `caches`; assert the cache write and the output."""
    caches = [c.clone() for c in caches]
    expected_cache = write_expected(caches[0], k, v, md.slot_mapping)
    backend = TorchReferenceBackend(spec, caches)
    backend.plan(md)
    out = backend.forward(q, k, v, 0)
    assert out.dtype == spec.dtype and out.shape == q.shape
    assert torch.equal(caches[0], expected_cache)
    torch.testing.assert_close(
        out.double(), dense_attention(q, expected_cache, md), atol=atol, rtol=rtol
    )
    return out


def run_and_check(
    spec: AttentionSpec,
    seqs: Sequence[tuple[int, int]],
    groups: Sequence[tuple[Sequence[int], int]] = (),
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> torch.Tensor:
    return check(spec, *make_batch(spec, seqs, groups), atol=atol, rtol=rtol)


@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("block_size", [1, 4, 16])
@pytest.mark.parametrize(
    "seqs", [DECODE, PREFILL, CHUNKED, MIXED], ids=["decode", "prefill", "chunked", "mixed"]
)
def test_matches_dense_oracle(seqs, block_size, heads):
    run_and_check(spec_for(seqs, heads, block_size), seqs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_computes_in_float32(dtype):
    spec = spec_for(MIXED, (8, 2), 4, dtype)
    run_and_check(spec, MIXED, atol=1e-2, rtol=1e-2)


def test_slot_mapping_writes_only_the_planned_layer_and_slots():
    spec = spec_for(MIXED, num_layers=2)
    md, caches, q, k, v = make_batch(spec, MIXED)
    before = [c.clone() for c in caches]
    backend = TorchReferenceBackend(spec, caches)
    backend.plan(md)
    backend.forward(q, k, v, 1)
    assert torch.equal(caches[0], before[0])
    assert torch.equal(caches[1], write_expected(before[1], k, v, md.slot_mapping))
    changed = (caches[1] != before[1]).flatten(3).any(-1)  # [num_blocks, 2, block_size]
    assert int(changed.sum()) == 2 * md.num_tokens


def test_layers_read_their_own_cache():
    spec = spec_for(MIXED, num_layers=2)
    md, caches, q, k, v = make_batch(spec, MIXED)
    backend = TorchReferenceBackend(spec, caches)
    backend.plan(md)
    out1 = backend.forward(q, k, v, 1)
    torch.testing.assert_close(out1.double(), dense_attention(q, caches[1], md), **TOL)
    out0 = backend.forward(q, k, v, 0)
    torch.testing.assert_close(out0.double(), dense_attention(q, caches[0], md), **TOL)
    assert not torch.allclose(out0, out1)


# Prefix groups: block_size 4, so num_blocks 3 = a 12-token shared prefix.
ONE_GROUP = ([(13, 1), (20, 1), (31, 1), (12 + 4, 1)], [([0, 1, 2, 3], 3)])
TWO_GROUPS = (
    [(9, 1), (22, 1), (14, 2), (30, 1), (7, 7), (17, 1), (25, 3)],
    [([0, 2, 3], 2), ([1, 5], 4)],
)
PREFILL_GROUPS = ([(20, 8), (12 + 5, 5), (40, 1), (26, 14)], [([0, 1, 2, 3], 3)])


@pytest.mark.parametrize(
    "case", [ONE_GROUP, TWO_GROUPS, PREFILL_GROUPS], ids=["one", "two+ungrouped", "prefill"]
)
@pytest.mark.parametrize("heads", [(4, 4), (6, 2)])
def test_prefix_groups_equal_plain_attention(case, heads):
    seqs, groups = case
    spec = spec_for(seqs, heads, 4)
    md, *tensors = make_batch(spec, seqs, groups)
    cascade = check(spec, md, *tensors)
    plain = check(spec, dataclasses.replace(md, prefix_groups=()), *tensors)
    torch.testing.assert_close(cascade, plain, atol=1e-5, rtol=1e-5)


def test_prefix_group_in_bfloat16():
    seqs, groups = TWO_GROUPS
    run_and_check(spec_for(seqs, (8, 2), 4, torch.bfloat16), seqs, groups, atol=1e-2, rtol=1e-2)


def test_merge_of_split_equals_attention_over_concatenation():
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(5, 6, 8, generator=gen, dtype=torch.float64)
    k = torch.randn(11, 2, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(11, 2, 8, generator=gen, dtype=torch.float64)
    full_out, full_lse = attention_with_lse(q, k, v, 0.3)
    for split in (0, 4, 11):
        out_a, lse_a = attention_with_lse(q, k[:split], v[:split], 0.3)
        out_b, lse_b = attention_with_lse(q, k[split:], v[split:], 0.3)
        out, lse = merge_attention_states(out_a, lse_a, out_b, lse_b)
        torch.testing.assert_close(out, full_out)
        torch.testing.assert_close(lse, full_lse)


def test_attention_with_lse_matches_naive_softmax():
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(4, 6, 8, generator=gen, dtype=torch.float64)
    k = torch.randn(7, 3, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(7, 3, 8, generator=gen, dtype=torch.float64)
    mask = torch.arange(7)[None, :] <= torch.arange(3, 7)[:, None]  # [4, 7], causal offset 3
    out, lse = attention_with_lse(q, k, v, 0.5, mask)
    scores = torch.einsum("qhd,khd->hqk", q, k.repeat_interleave(2, 1)) * 0.5
    scores = scores.masked_fill(~mask, float("-inf"))
    expected = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v.repeat_interleave(2, 1))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(lse, scores.logsumexp(-1).T)


def test_rows_without_keys_merge_as_no_ops():
    q = torch.randn(3, 2, 4)
    k = torch.randn(5, 1, 4)
    empty_out, empty_lse = attention_with_lse(q, k[:0], k[:0], 1.0)
    assert torch.equal(empty_out, torch.zeros_like(q))
    assert torch.isneginf(empty_lse).all()
    out, lse = attention_with_lse(q, k, k, 1.0)
    merged, merged_lse = merge_attention_states(empty_out, empty_lse, out, lse)
    assert torch.equal(merged, out) and torch.equal(merged_lse, lse)
    both, both_lse = merge_attention_states(empty_out, empty_lse, empty_out, empty_lse)
    assert torch.equal(both, empty_out) and torch.isneginf(both_lse).all()


def _planned(
    seqs: Sequence[tuple[int, int]],
    groups: Sequence[tuple[Sequence[int], int]] = (),
    **changes: object,
) -> None:
    """Plan a valid batch after replacing metadata fields with `changes`."""
    spec = spec_for(seqs)
    md, caches, *_ = make_batch(spec, seqs, groups)
    TorchReferenceBackend(spec, caches).plan(dataclasses.replace(md, **changes))


def test_rejects_query_longer_than_sequence():
    with pytest.raises(
        ValueError, match=r"query_lens_host\[0\] = 4 exceeds seq_lens_host\[0\] = 3"
    ):
        _planned([(4, 4)], seq_lens_host=(3,), seq_lens=torch.tensor([3]))


def test_rejects_block_table_too_short():
    md = make_metadata([([3, 5], 8, 1)], block_size=4, extra_columns=0)
    spec = make_spec(block_size=4, num_blocks=8)
    backend = TorchReferenceBackend(spec, spec.allocate_kv_cache())
    with pytest.raises(ValueError, match="block_tables has 2 columns"):
        backend.plan(dataclasses.replace(md, seq_lens_host=(9,), seq_lens=torch.tensor([9])))


def test_rejects_group_member_with_query_inside_prefix():
    with pytest.raises(ValueError, match="query at position 7, inside the shared prefix of 8"):
        _planned([(10, 3), (12, 1)], [([0, 1], 2)])


def test_rejects_group_whose_tables_disagree():
    md, caches, *_ = make_batch(spec_for([(10, 1), (12, 1)]), [(10, 1), (12, 1)])
    bad = dataclasses.replace(md, prefix_groups=(PrefixGroup((0, 1), 2),))
    with pytest.raises(ValueError, match="differ in their first 2 blocks"):
        TorchReferenceBackend(spec_for([(10, 1), (12, 1)]), caches).plan(bad)


def test_rejects_sequence_in_two_groups():
    with pytest.raises(ValueError, match="sequence 1 is in more than one prefix group"):
        _planned(
            [(10, 1), (12, 1)],
            [([0, 1], 2)],
            prefix_groups=(PrefixGroup((0, 1), 2), PrefixGroup((1,), 1)),
        )


def test_rejects_inconsistent_device_tensors():
    seqs = [(10, 1), (7, 3)]
    md = make_batch(spec_for(seqs), seqs)[0]
    with pytest.raises(ValueError, match=r"slot_mapping\[1\]"):
        _planned(seqs, slot_mapping=md.slot_mapping + torch.tensor([0, 1, 0, 0]))
    with pytest.raises(ValueError, match="query_start_loc"):
        _planned(seqs, query_start_loc=torch.tensor([0, 2, 4], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"block_tables\[0\] holds a block id outside"):
        _planned(seqs, block_tables=md.block_tables.index_fill(1, torch.tensor([1]), 999))


def test_forward_checks_plan():
    spec = spec_for(DECODE)
    md, caches, q, k, v = make_batch(spec, DECODE)
    backend = TorchReferenceBackend(spec, caches)
    with pytest.raises(RuntimeError, match="before plan"):
        backend.forward(q, k, v, 0)
    backend.plan(md)
    with pytest.raises(ValueError, match="q has 4 tokens"):
        backend.forward(q[:4], k[:4], v[:4], 0)


def test_empty_batch():
    spec = make_spec()
    backend = TorchReferenceBackend(spec, spec.allocate_kv_cache())
    backend.plan(make_metadata([], spec.block_size))
    q = torch.zeros(0, spec.num_heads, spec.head_dim)
    k = torch.zeros(0, spec.num_kv_heads, spec.head_dim)
    assert backend.forward(q, k, k, 0).shape == (0, spec.num_heads, spec.head_dim)
