"""Triton kernel behind `triton_paged_decode.py`: paged decode attention with the K/V append fused.

Imported on the first launch only (this module imports triton). Loops are `while` loops over
lengths read from device tensors, so one compiled kernel (and one CUDA graph) serves any length.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def paged_decode_kernel(
    q_ptr,  # [batch, num_heads, HEAD_DIM]
    k_ptr,  # [batch, num_kv_heads, HEAD_DIM], this step's key of each sequence
    v_ptr,  # [batch, num_kv_heads, HEAD_DIM]
    cache_ptr,  # [num_blocks, 2, PAGE_SIZE, num_kv_heads, HEAD_DIM] contiguous
    indptr_ptr,  # [batch + 1] int32: sequence b's pages are indices[indptr[b]:indptr[b + 1]]
    indices_ptr,  # int32 page ids
    last_ptr,  # [batch] int32 tokens in each sequence's last page (this step's token included)
    key_rows_ptr,  # [batch] int64 cache row of this step's key (its value: + PAGE_SIZE)
    o_ptr,  # [batch, num_heads, NUM_SPLITS, HEAD_DIM] float32, or the output when NUM_SPLITS == 1
    lse_ptr,  # [batch, num_heads, NUM_SPLITS] float32 (base 2)
    num_kv_heads,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kh,
    stride_vb,
    stride_vh,
    scale_log2,  # softmax scale * log2(e)
    GROUP: tl.constexpr,  # query heads per KV head
    BLOCK_G: tl.constexpr,  # GROUP padded to >= 16 rows for the tensor cores
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    """Program (sequence b, KV head h, split s): the GROUP query heads of h over split s's pages.

    The cached tokens (all but this step's) are cut into NUM_SPLITS runs of whole pages; split 0
    also writes this step's k/v into the cache, and the last split attends that token from the
    inputs, so no program reads a cache slot another one writes. An empty split stores lse -inf.
    """
    b, h, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, HEAD_DIM)
    t = tl.arange(0, PAGE_SIZE)
    heads = h * GROUP + g  # [BLOCK_G]
    q_rows = q_ptr + b * stride_qb + heads[:, None] * stride_qh + d[None, :]
    q = tl.load(q_rows, mask=(g < GROUP)[:, None], other=0.0)  # [BLOCK_G, HEAD_DIM]
    k_new = tl.load(k_ptr + b * stride_kb + h * stride_kh + d)  # [HEAD_DIM]
    v_new = tl.load(v_ptr + b * stride_vb + h * stride_vh + d)
    row_elems = num_kv_heads * HEAD_DIM  # elements of one cache row (one token, all KV heads)
    if s == 0:
        key_row = tl.load(key_rows_ptr + b)
        tl.store(cache_ptr + key_row * row_elems + h * HEAD_DIM + d, k_new)
        tl.store(cache_ptr + (key_row + PAGE_SIZE) * row_elems + h * HEAD_DIM + d, v_new)

    first = tl.load(indptr_ptr + b)
    num_pages = tl.load(indptr_ptr + b + 1) - first
    cached = (num_pages - 1) * PAGE_SIZE + tl.load(last_ptr + b) - 1  # tokens before this one
    cached_pages = tl.cdiv(cached, PAGE_SIZE)
    per_split = tl.cdiv(cached_pages, NUM_SPLITS)
    page = s * per_split
    end = tl.minimum(page + per_split, cached_pages)
    m = tl.full((BLOCK_G,), float("-inf"), tl.float32)
    l_sum = tl.zeros((BLOCK_G,), tl.float32)
    acc = tl.zeros((BLOCK_G, HEAD_DIM), tl.float32)
    while page < end:  # every page here holds at least one cached token
        block = tl.load(indices_ptr + first + page).to(tl.int64)
        rows = block * 2 * PAGE_SIZE + t  # [PAGE_SIZE] key rows; values at + PAGE_SIZE
        offs = rows[:, None] * row_elems + h * HEAD_DIM + d[None, :]  # [PAGE_SIZE, HEAD_DIM]
        keys = tl.load(cache_ptr + offs)
        values = tl.load(cache_ptr + offs + PAGE_SIZE * row_elems)
        scores = tl.dot(q, tl.trans(keys)) * scale_log2  # [BLOCK_G, PAGE_SIZE]
        valid = (page * PAGE_SIZE + t) < cached
        scores = tl.where(valid[None, :], scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, 1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l_sum = l_sum * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(values.dtype), values)
        m = m_new
        page += 1
    if s == NUM_SPLITS - 1:
        score = tl.sum(q.to(tl.float32) * k_new.to(tl.float32)[None, :], 1) * scale_log2
        m_new = tl.maximum(m, score)
        alpha = tl.exp2(m - m_new)
        p_new = tl.exp2(score - m_new)
        l_sum = l_sum * alpha + p_new
        acc = acc * alpha[:, None] + p_new[:, None] * v_new.to(tl.float32)[None, :]
        m = m_new

    some = l_sum > 0
    out = acc / tl.where(some, l_sum, 1.0)[:, None]
    head_ok = (g < GROUP)[:, None]
    if NUM_SPLITS == 1:
        o_rows = o_ptr + (b * (num_kv_heads * GROUP) + heads[:, None]) * HEAD_DIM + d[None, :]
        tl.store(o_rows, out.to(o_ptr.dtype.element_ty), mask=head_ok)
    else:
        slot = (b * (num_kv_heads * GROUP) + heads) * NUM_SPLITS + s  # [BLOCK_G]
        tl.store(o_ptr + slot[:, None] * HEAD_DIM + d[None, :], out, mask=head_ok)
        lse = tl.where(some, m + tl.log2(tl.where(some, l_sum, 1.0)), float("-inf"))
        tl.store(lse_ptr + slot, lse, mask=g < GROUP)
