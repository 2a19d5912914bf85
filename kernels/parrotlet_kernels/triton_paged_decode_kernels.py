"""Triton kernel behind `triton_paged_decode.py`: paged decode attention with the K/V append fused.

Imported on the first launch only (this module imports triton). Loops run over lengths read
from device tensors, so one compiled kernel (and one CUDA graph) serves any length.
Partial states (normalized output, base-2 LSE) go to slot s of `[batch, num_heads, NUM_SLOTS]`:
slots [0, NUM_SPLITS) are the rows' own pages, the rest the shared prefixes' splits.
"""

from __future__ import annotations

import triton
import triton.language as tl

from parrotlet_kernels.programmatic_launch_kernels import wait_for_inputs
from parrotlet_kernels.triton_shared_prefix_kernels import _load_kv, _softmax_step, _store_partial


@triton.jit
def _load_heads(
    row_ptrs,  # [R] pointers to head vectors of HEAD_DIM contiguous elements
    row_ok,  # [R] bool
    pos,  # [R] int positions (used with ROPE)
    cos_sin_ptr,  # [max_positions, HEAD_DIM] float32: cos, then sin, of each frequency
    ROPE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    """The rows `[R, HEAD_DIM]` (0 where not ok), rotated by rotate-half RoPE at `pos` when ROPE
    (in float32, rounded back to the rows' dtype, as flashinfer's in-place RoPE does)."""
    d = tl.arange(0, HEAD_DIM)
    x = tl.load(row_ptrs[:, None] + d[None, :], mask=row_ok[:, None], other=0.0)
    if ROPE:
        half: tl.constexpr = HEAD_DIM // 2
        swapped = tl.load(row_ptrs[:, None] + ((d + half) % HEAD_DIM)[None, :],
                          mask=row_ok[:, None], other=0.0)  # fmt: skip
        freq = cos_sin_ptr + pos[:, None] * HEAD_DIM + (d % half)[None, :]
        cos, sin = tl.load(freq), tl.load(freq + half)
        sign = tl.where(d < half, -1.0, 1.0)[None, :]
        rotated = x.to(tl.float32) * cos + sign * swapped.to(tl.float32) * sin
        x = rotated.to(x.dtype)
    return x


@triton.jit
def paged_decode_kernel(
    q_ptr,  # [batch, num_heads, HEAD_DIM]
    k_ptr,  # [batch, num_kv_heads, HEAD_DIM], this step's key of each sequence
    v_ptr,  # [batch, num_kv_heads, HEAD_DIM]
    pos_ptr,  # [batch] int position of each sequence's token (ROPE)
    cos_sin_ptr,  # [max_positions, HEAD_DIM] float32 (ROPE)
    cache_ptr,  # [num_blocks, 2, PAGE_SIZE, num_kv_heads, HEAD_DIM] contiguous
    indptr_ptr,  # [batch + 1] int32: sequence b's pages are indices[indptr[b]:indptr[b + 1]]
    indices_ptr,  # int32 page ids
    last_ptr,  # [batch] int32 tokens in each sequence's last page (this step's token included)
    key_rows_ptr,  # [batch] int64 cache row of this step's key (its value: + PAGE_SIZE)
    o_ptr,  # [batch, num_heads, NUM_SLOTS, HEAD_DIM] float32, or the output when NUM_SLOTS == 1
    lse_ptr,  # [batch, num_heads, NUM_SLOTS] float32 (base 2)
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
    BLOCK_N: tl.constexpr,  # cached tokens per loop step, a multiple of PAGE_SIZE
    NUM_SPLITS: tl.constexpr,
    NUM_SLOTS: tl.constexpr,  # >= NUM_SPLITS; the slots past NUM_SPLITS are prefix_tiles_kernel's
    ROPE: tl.constexpr,  # q and k arrive unrotated: rotate them here (k as it is cached)
    PIPELINED: tl.constexpr,  # the KV loop: Triton's software pipeline, not register prefetch
    PDL: tl.constexpr = False,  # launched with programmatic dependent launch: wait first
):
    """Program (sequence b, KV head h, split s): the GROUP query heads of h over split s's pages.

    The cached tokens (all but this step's) are cut into NUM_SPLITS runs of whole pages, each
    attended BLOCK_N tokens at a time (the next block's loads issued before this block's math,
    or with PIPELINED through Triton's cp.async pipeline: triton_paged_decode.plan_launch picks);
    split 0 also writes this step's k/v into the cache, and the last split attends that token
    from the inputs, so no program reads a cache slot another one writes. An empty split stores
    lse -inf.
    """
    wait_for_inputs(PDL)  # q, k, v come from the kernel before (programmatic_launch.py)
    b, h, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, HEAD_DIM)
    heads = h * GROUP + g  # [BLOCK_G]
    one = tl.zeros([1], tl.int32)
    pos = one  # [1]
    if ROPE:
        pos = tl.load(pos_ptr + b + one)
    q_heads = q_ptr + b * stride_qb + heads * stride_qh
    q = _load_heads(q_heads, g < GROUP, pos, cos_sin_ptr, ROPE, HEAD_DIM)  # [BLOCK_G, HEAD_DIM]
    k_head = k_ptr + b * stride_kb + h * stride_kh + one
    k_new = _load_heads(k_head, one == 0, pos, cos_sin_ptr, ROPE, HEAD_DIM)  # [1, HEAD_DIM]
    v_new = tl.load(v_ptr + b * stride_vb + h * stride_vh + d)
    row_elems = num_kv_heads * HEAD_DIM  # elements of one cache row (one token, all KV heads)
    if s == 0:
        key_row = tl.load(key_rows_ptr + b)
        tl.store(cache_ptr + key_row * row_elems + h * HEAD_DIM + d[None, :], k_new)
        tl.store(cache_ptr + (key_row + PAGE_SIZE) * row_elems + h * HEAD_DIM + d, v_new)

    first = tl.load(indptr_ptr + b)
    num_pages = tl.load(indptr_ptr + b + 1) - first
    cached = (num_pages - 1) * PAGE_SIZE + tl.load(last_ptr + b) - 1  # tokens before this one
    per_split = tl.cdiv(tl.cdiv(cached, PAGE_SIZE), NUM_SPLITS) * PAGE_SIZE  # whole pages
    start = s * per_split
    end = tl.minimum(start + per_split, cached)
    kv_ptr, pages_ptr = cache_ptr + h * HEAD_DIM, indices_ptr + first
    page_stride, kv_stride = 2 * PAGE_SIZE * row_elems, PAGE_SIZE * row_elems
    m = tl.full((BLOCK_G,), float("-inf"), tl.float32)
    l_sum = tl.zeros((BLOCK_G,), tl.float32)
    acc = tl.zeros((BLOCK_G, HEAD_DIM), tl.float32)
    if PIPELINED:  # each block's loads overlap the previous block's math via cp.async
        for n0 in tl.range(start, end, BLOCK_N, num_stages=2):
            tok = n0 + tl.arange(0, BLOCK_N)
            keys, values = _load_kv(kv_ptr, pages_ptr, tok, tok < end, page_stride, kv_stride,
                                    row_elems, HEAD_DIM, PAGE_SIZE)  # fmt: skip
            m, l_sum, acc = _softmax_step(q, keys, values, tok < end, scale_log2, m, l_sum, acc)
    else:
        tok = start + tl.arange(0, BLOCK_N)
        keys, values = _load_kv(kv_ptr, pages_ptr, tok, tok < end, page_stride, kv_stride,
                                row_elems, HEAD_DIM, PAGE_SIZE)  # fmt: skip
        while start < end:  # block i + 1's loads are issued before block i's math
            nxt = tok + BLOCK_N
            keys_next, values_next = _load_kv(kv_ptr, pages_ptr, nxt, nxt < end, page_stride,
                                              kv_stride, row_elems, HEAD_DIM,
                                              PAGE_SIZE)  # fmt: skip
            m, l_sum, acc = _softmax_step(q, keys, values, tok < end, scale_log2, m, l_sum, acc)
            keys, values, tok = keys_next, values_next, nxt
            start += BLOCK_N
    if s == NUM_SPLITS - 1:
        score = tl.sum(q.to(tl.float32) * k_new.to(tl.float32), 1) * scale_log2
        m_new = tl.maximum(m, score)
        alpha = tl.exp2(m - m_new)
        p_new = tl.exp2(score - m_new)
        l_sum = l_sum * alpha + p_new
        acc = acc * alpha[:, None] + p_new[:, None] * v_new.to(tl.float32)[None, :]
        m = m_new

    some = l_sum > 0
    out = acc / tl.where(some, l_sum, 1.0)[:, None]
    head_ok = (g < GROUP)[:, None]
    if NUM_SLOTS == 1:
        o_rows = o_ptr + (b * (num_kv_heads * GROUP) + heads[:, None]) * HEAD_DIM + d[None, :]
        tl.store(o_rows, out.to(o_ptr.dtype.element_ty), mask=head_ok)
    else:
        slot = (b * (num_kv_heads * GROUP) + heads) * NUM_SLOTS + s  # [BLOCK_G]
        tl.store(o_ptr + slot[:, None] * HEAD_DIM + d[None, :], out, mask=head_ok)
        lse = tl.where(some, m + tl.log2(tl.where(some, l_sum, 1.0)), float("-inf"))
        tl.store(lse_ptr + slot, lse, mask=g < GROUP)


@triton.jit
def prefix_tiles_kernel(
    q_ptr,  # [batch, num_heads, HEAD_DIM]
    pos_ptr,  # [batch] int position of each sequence's token (ROPE)
    cos_sin_ptr,  # [max_positions, HEAD_DIM] float32 (ROPE)
    cache_ptr,  # [num_blocks, 2, PAGE_SIZE, num_kv_heads, HEAD_DIM] contiguous
    indices_ptr,  # int32 page ids; a tile's prefix pages are a run of them
    tile_rows_ptr,  # [num_tiles, ROWS] int32 batch rows of each tile, -1 past its last
    tile_pages_ptr,  # [num_tiles, 2] int32 (first index into indices, number of prefix pages)
    o_ptr,  # [batch, num_heads, NUM_SLOTS, HEAD_DIM] float32
    lse_ptr,  # [batch, num_heads, NUM_SLOTS] float32 (base 2)
    num_tiles,  # rows of the tile tables
    programs,  # the grid's first dimension: program p takes tiles p, p + programs, ...
    num_kv_heads,
    stride_qb,
    stride_qh,
    scale_log2,  # softmax scale * log2(e)
    GROUP: tl.constexpr,  # query heads per KV head
    ROWS: tl.constexpr,  # batch rows per tile, BLOCK_M // GROUP
    BLOCK_M: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,  # prefix tokens per KV block
    NUM_SLOTS: tl.constexpr,
    NUM_SPLITS: tl.constexpr,  # prefix splits, in slots NUM_SLOTS - NUM_SPLITS ...
    ROPE: tl.constexpr,  # q arrives unrotated
    PDL: tl.constexpr = False,  # launched with programmatic dependent launch: wait first
):
    """Program (p, KV head h, split s): tiles p, p + programs, ... of the table, each tile's rows
    against split s of their prefix.

    All ROWS * GROUP query heads of a tile attend the prefix as one matrix product per KV
    block, so a prefix is read once per tile, not once per sequence. A tile without prefix pages
    (rows that share none) stores LSE -inf for its rows, which the merge weighs 0. The unused
    tiles come last and have no rows: the first one a program meets ends its walk.
    """
    wait_for_inputs(PDL)
    t, h, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    while t < num_tiles:
        if tl.load(tile_rows_ptr + t * ROWS) < 0:  # unused, and so is every tile after it
            t += num_tiles  # (not `t = num_tiles`: t stays an int32 tensor in both branches)
        else:
            _prefix_tile(q_ptr, pos_ptr, cos_sin_ptr, cache_ptr, indices_ptr, tile_rows_ptr,
                         tile_pages_ptr, o_ptr, lse_ptr, num_kv_heads, stride_qb, stride_qh,
                         scale_log2, t, h, s, GROUP, ROWS, BLOCK_M, HEAD_DIM, PAGE_SIZE,
                         BLOCK_N, NUM_SLOTS, NUM_SPLITS, ROPE)  # fmt: skip
            t += programs


@triton.jit
def _prefix_tile(
    q_ptr, pos_ptr, cos_sin_ptr, cache_ptr, indices_ptr, tile_rows_ptr, tile_pages_ptr, o_ptr,
    lse_ptr, num_kv_heads, stride_qb, stride_qh, scale_log2, t, h, s,
    GROUP: tl.constexpr, ROWS: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SLOTS: tl.constexpr,
    NUM_SPLITS: tl.constexpr, ROPE: tl.constexpr,
):  # fmt: skip
    """Tile t's rows of KV head h against split s of their prefix (prefix_tiles_kernel)."""
    m = tl.arange(0, BLOCK_M)
    row = tl.load(tile_rows_ptr + t * ROWS + m // GROUP, mask=m < ROWS * GROUP, other=-1)
    row_ok = row >= 0  # [BLOCK_M]
    head = h * GROUP + m % GROUP
    pos = row
    if ROPE:
        pos = tl.load(pos_ptr + row, mask=row_ok, other=0)
    q_heads = q_ptr + row * stride_qb + head * stride_qh
    q = _load_heads(q_heads, row_ok, pos, cos_sin_ptr, ROPE, HEAD_DIM)  # [BLOCK_M, HEAD_DIM]
    first = tl.load(tile_pages_ptr + 2 * t)
    tokens = tl.load(tile_pages_ptr + 2 * t + 1) * PAGE_SIZE
    per_split = tl.cdiv(tokens, NUM_SPLITS * PAGE_SIZE) * PAGE_SIZE  # whole pages
    start = s * per_split
    end = tl.minimum(start + per_split, tokens)
    row_elems = num_kv_heads * HEAD_DIM
    kv_ptr, pages_ptr = cache_ptr + h * HEAD_DIM, indices_ptr + first
    page_stride, kv_stride = 2 * PAGE_SIZE * row_elems, PAGE_SIZE * row_elems
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    tok = start + tl.arange(0, BLOCK_N)
    k, v = _load_kv(kv_ptr, pages_ptr, tok, tok < end, page_stride, kv_stride, row_elems,
                    HEAD_DIM, PAGE_SIZE)  # fmt: skip
    # a `for` loop (measured a little faster here than the paged kernel's `while`); register
    # prefetch, not the paged kernel's pipelined loop (slower here at 256 rows, 2026-12-06)
    for n0 in range(start, end, BLOCK_N):  # block i + 1's loads before block i's math
        tok = n0 + tl.arange(0, BLOCK_N)
        nxt = tok + BLOCK_N
        k_next, v_next = _load_kv(kv_ptr, pages_ptr, nxt, nxt < end, page_stride, kv_stride,
                                  row_elems, HEAD_DIM, PAGE_SIZE)  # fmt: skip
        m_i, l_i, acc = _softmax_step(q, k, v, tok < end, scale_log2, m_i, l_i, acc)
        k, v = k_next, v_next
    _store_partial(o_ptr, lse_ptr, row * (num_kv_heads * GROUP) + head, row_ok,
                   NUM_SLOTS - NUM_SPLITS + s, NUM_SLOTS, m_i, l_i, acc, HEAD_DIM)  # fmt: skip
