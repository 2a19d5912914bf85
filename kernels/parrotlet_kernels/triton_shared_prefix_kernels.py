"""The Triton kernels of shared-prefix decode; launched only by triton_shared_prefix.py.

Importing this module needs triton. Scores are kept in base 2 throughout: `s2 = q·k * scale *
log2(e)`, softmax weights are `exp2(s2 - m)`, and every log-sum-exp written or read here is a
base-2 LSE (`lse2 = lse / ln 2`). Accumulation is float32; only the P·V operand is cast to the
cache dtype for the tensor cores, and the partial outputs to the partials' dtype.

Partial states live in contiguous buffers `o_part [batch, num_heads, num_slots, HEAD_DIM]`
(normalized outputs) and `lse_part [batch, num_heads, num_slots]` (float32): slots
0..num_slots-2 are the prefix splits, the last slot is the sequence's own suffix.
"""

from __future__ import annotations

import triton
import triton.language as tl

from parrotlet_kernels.programmatic_launch_kernels import wait_for_inputs


@triton.jit
def _load_kv(
    kv_ptr,  # the cache at this program's KV head: element [0, 0, 0, kv_head, 0]
    pages_ptr,  # page ids of this KV run, token t lives in page pages_ptr[t // PAGE_SIZE]
    tok,  # [BLOCK_N] int32 token positions in the run
    tok_ok,  # [BLOCK_N] bool
    stride_page,
    stride_kv,
    stride_slot,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
):
    """Keys and values `[BLOCK_N, HEAD_DIM]` at paged positions `tok` (0 where not ok)."""
    d = tl.arange(0, HEAD_DIM)
    page = tl.load(pages_ptr + tok // PAGE_SIZE, mask=tok_ok, other=0).to(tl.int64)
    rows = kv_ptr + page * stride_page + (tok % PAGE_SIZE) * stride_slot  # [BLOCK_N] pointers
    k = tl.load(rows[:, None] + d[None, :], mask=tok_ok[:, None], other=0.0)
    v = tl.load(rows[:, None] + stride_kv + d[None, :], mask=tok_ok[:, None], other=0.0)
    return k, v


@triton.jit
def _softmax_step(
    q,  # [ROWS, HEAD_DIM] cache dtype
    k,  # [BLOCK_N, HEAD_DIM]
    v,  # [BLOCK_N, HEAD_DIM]
    tok_ok,  # [BLOCK_N] bool
    scale_log2,
    m_i,  # [ROWS] float32 running max (base 2)
    l_i,  # [ROWS] float32 running sum of weights
    acc,  # [ROWS, HEAD_DIM] float32 running unnormalized output
):
    """One online-softmax step over a KV block; returns the updated (m_i, l_i, acc)."""
    bias = tl.where(tok_ok, 0.0, float("-inf"))  # [BLOCK_N]
    qk = tl.dot(q, tl.trans(k)) + bias[None, :]  # [ROWS, BLOCK_N] float32, unscaled
    m_new = tl.maximum(m_i, tl.max(qk, 1) * scale_log2)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(qk * scale_log2 - m_safe[:, None])  # one FMA + exp2 per score
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _store_partial(
    o_part_ptr,
    lse_part_ptr,
    row,  # [ROWS] int32, seq * num_heads + head
    row_ok,  # [ROWS] bool
    slot,
    num_slots,
    m_i,
    l_i,
    acc,
    HEAD_DIM: tl.constexpr,
):
    """Write one slot of normalized partial states; a row without keys gets 0 and LSE -inf."""
    d = tl.arange(0, HEAD_DIM)
    out = tl.where(l_i[:, None] > 0, acc / l_i[:, None], 0.0)
    o_rows = o_part_ptr + (row[:, None] * num_slots + slot) * HEAD_DIM
    tl.store(o_rows + d[None, :], out.to(o_part_ptr.dtype.element_ty), mask=row_ok[:, None])
    tl.store(lse_part_ptr + row * num_slots + slot, m_i + tl.log2(l_i), mask=row_ok)


@triton.jit
def _suffix_partial(
    q_ptr,
    cache_ptr,
    suffix_pages_ptr,
    suffix_lens_ptr,
    o_part_ptr,
    lse_part_ptr,
    seq,
    kv_head,
    num_heads,
    num_slots,
    stride_qb,
    stride_qh,
    stride_page,
    stride_kv,
    stride_slot,
    stride_head,
    stride_table,
    scale_log2,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The GQA group of (seq, kv_head) over the sequence's own suffix, into the last slot."""
    g = tl.arange(0, BLOCK_G)
    g_ok = g < GROUP
    head = kv_head * GROUP + g
    d = tl.arange(0, HEAD_DIM)
    q_rows = q_ptr + seq * stride_qb + head[:, None] * stride_qh
    q = tl.load(q_rows + d[None, :], mask=g_ok[:, None], other=0.0)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    suffix_len = tl.load(suffix_lens_ptr + seq)
    pages = suffix_pages_ptr + seq * stride_table
    kv_ptr = cache_ptr + kv_head * stride_head
    for n0 in range(0, suffix_len, BLOCK_N):
        tok = n0 + tl.arange(0, BLOCK_N)
        k, v = _load_kv(kv_ptr, pages, tok, tok < suffix_len,
                        stride_page, stride_kv, stride_slot, HEAD_DIM, PAGE_SIZE)  # fmt: skip
        m_i, l_i, acc = _softmax_step(q, k, v, tok < suffix_len, scale_log2, m_i, l_i, acc)
    _store_partial(o_part_ptr, lse_part_ptr, seq * num_heads + head, g_ok, num_slots - 1,
                   num_slots, m_i, l_i, acc, HEAD_DIM)  # fmt: skip


@triton.jit(do_not_specialize=["batch", "prefix_len"])
def prefix_kernel(
    q_ptr,  # [batch, num_heads, HEAD_DIM]
    cache_ptr,  # [num_blocks, 2, PAGE_SIZE, num_kv_heads, HEAD_DIM]
    prefix_pages_ptr,  # [>= ceil(prefix_len / PAGE_SIZE)] int32
    suffix_pages_ptr,  # [batch, max_suffix_pages] int32
    suffix_lens_ptr,  # [batch] int32
    o_part_ptr,  # [batch, num_heads, num_slots, HEAD_DIM]
    lse_part_ptr,  # [batch, num_heads, num_slots] float32
    batch,
    num_heads,
    num_slots,  # num_splits + 1
    prefix_len,
    chunk_len,  # prefix tokens per split, a multiple of BLOCK_N
    stride_qb,
    stride_qh,
    stride_page,
    stride_kv,
    stride_slot,
    stride_head,
    stride_table,
    scale_log2,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SUFFIX_BLOCK_N: tl.constexpr,
    FUSE_SUFFIX: tl.constexpr,
):
    """Program (row tile, kv head, split): BLOCK_M query rows of one KV head against one chunk.

    Row r of KV head h is query head h * GROUP + r % GROUP of sequence r // GROUP, so the whole
    GQA group of every sequence attends the chunk in one matrix product per KV block; block
    i + 1's loads are issued before block i's math. With FUSE_SUFFIX the program first attends
    the suffixes of the tile's sequences number split, split + num_splits, ... (those whose
    first row is in the tile), while its first prefix block is loading.
    """
    row_tile, kv_head, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = row_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < batch * GROUP
    seq = rows // GROUP
    head = kv_head * GROUP + rows % GROUP
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + seq[:, None] * stride_qb + head[:, None] * stride_qh + d[None, :],
                mask=row_ok[:, None], other=0.0)  # fmt: skip
    start = split * chunk_len
    end = tl.minimum(start + chunk_len, prefix_len)
    kv_ptr = cache_ptr + kv_head * stride_head
    tok = start + tl.arange(0, BLOCK_N)
    k, v = _load_kv(kv_ptr, prefix_pages_ptr, tok, tok < end,
                    stride_page, stride_kv, stride_slot, HEAD_DIM, PAGE_SIZE)  # fmt: skip
    if FUSE_SUFFIX:
        first = tl.cdiv(row_tile * BLOCK_M, GROUP)
        last = tl.minimum(tl.cdiv(row_tile * BLOCK_M + BLOCK_M, GROUP), batch)
        for s in range(first + split, last, tl.num_programs(2)):
            _suffix_partial(
                q_ptr, cache_ptr, suffix_pages_ptr, suffix_lens_ptr, o_part_ptr, lse_part_ptr,
                s, kv_head, num_heads, num_slots, stride_qb, stride_qh,
                stride_page, stride_kv, stride_slot, stride_head, stride_table, scale_log2,
                GROUP, BLOCK_G, HEAD_DIM, PAGE_SIZE, SUFFIX_BLOCK_N,
            )  # fmt: skip
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        nxt = n0 + BLOCK_N + tl.arange(0, BLOCK_N)
        k_next, v_next = _load_kv(kv_ptr, prefix_pages_ptr, nxt, nxt < end,
                                  stride_page, stride_kv, stride_slot,
                                  HEAD_DIM, PAGE_SIZE)  # fmt: skip
        tok = n0 + tl.arange(0, BLOCK_N)
        m_i, l_i, acc = _softmax_step(q, k, v, tok < end, scale_log2, m_i, l_i, acc)
        k, v = k_next, v_next
    _store_partial(o_part_ptr, lse_part_ptr, seq * num_heads + head, row_ok, split, num_slots,
                   m_i, l_i, acc, HEAD_DIM)  # fmt: skip


@triton.jit(do_not_specialize=["num_slots"])
def suffix_kernel(
    q_ptr,  # [batch, num_heads, HEAD_DIM]
    cache_ptr,  # [num_blocks, 2, PAGE_SIZE, num_kv_heads, HEAD_DIM]
    suffix_pages_ptr,  # [batch, max_suffix_pages] int32
    suffix_lens_ptr,  # [batch] int32
    o_part_ptr,  # [batch, num_heads, num_slots, HEAD_DIM]
    lse_part_ptr,  # [batch, num_heads, num_slots] float32
    num_heads,
    num_slots,
    stride_qb,
    stride_qh,
    stride_page,
    stride_kv,
    stride_slot,
    stride_head,
    stride_table,
    scale_log2,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Program (sequence, kv head): the suffix slot, when the prefix kernel does not fuse it."""
    _suffix_partial(
        q_ptr, cache_ptr, suffix_pages_ptr, suffix_lens_ptr, o_part_ptr, lse_part_ptr,
        tl.program_id(0), tl.program_id(1), num_heads, num_slots, stride_qb, stride_qh,
        stride_page, stride_kv, stride_slot, stride_head, stride_table, scale_log2,
        GROUP, BLOCK_G, HEAD_DIM, PAGE_SIZE, BLOCK_N,
    )  # fmt: skip


@triton.jit(do_not_specialize=["num_slots"])
def merge_kernel(
    o_part_ptr,  # [batch, num_heads, num_slots, HEAD_DIM]
    lse_part_ptr,  # [batch, num_heads, num_slots] float32
    out_ptr,  # [batch, num_heads, HEAD_DIM] contiguous
    num_slots,
    SLOTS: tl.constexpr,  # a power of two >= num_slots
    HEAD_DIM: tl.constexpr,
    PDL: tl.constexpr = False,  # launched with programmatic dependent launch: wait first
):
    """Program (sequence * num_heads + head): the LSE-weighted sum of the row's slots.

    Every prefix split holds at least one key, so the weights never sum to 0.
    """
    wait_for_inputs(PDL)
    row = tl.program_id(0)
    slot = tl.arange(0, SLOTS)
    slot_ok = slot < num_slots
    d = tl.arange(0, HEAD_DIM)
    lse = tl.load(lse_part_ptr + row * num_slots + slot, mask=slot_ok, other=float("-inf"))
    o_rows = o_part_ptr + (row * num_slots + slot[:, None]) * HEAD_DIM
    o = tl.load(o_rows + d[None, :], mask=slot_ok[:, None], other=0.0).to(tl.float32)
    w = tl.exp2(lse - tl.max(lse, 0))  # [SLOTS]
    out = tl.sum(o * w[:, None], 0) / tl.sum(w, 0)
    tl.store(out_ptr + row * HEAD_DIM + d, out.to(out_ptr.dtype.element_ty))
