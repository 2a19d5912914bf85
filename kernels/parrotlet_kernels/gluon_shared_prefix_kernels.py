"""The warp-specialized prefix kernel of shared-prefix decode (Gluon, Hopper); launched only by
triton_shared_prefix.py when its launch asks for `warp_specialized`.

It computes what `prefix_kernel` in triton_shared_prefix_kernels.py computes without fused
suffixes: the partial state of 128 query rows of one KV head over one chunk of the prefix, into
the chunk's slot of `o_part` / `lse_part` (same buffers, same base-2 LSE). The Triton kernel
runs its loads, matrix products and softmax in one instruction stream of 8 warps, and reaches
about a quarter of the tensor cores' rate (benchmarks/results/kernel_shared_prefix_notes.md).
Here each program is three partitions that the warp schedulers interleave:

- a loader warpgroup streams the chunk's KV blocks through `STAGES` shared-memory slots with
  `cp.async` (pages are gathered, so no TMA); each thread's copies arrive on the slot's barrier
  as they land, and the next block's page ids load while it waits for a free slot;
- two consumer warpgroups, 64 query rows each, wait for a slot, run `wgmma` for Q·Kᵀ, the
  online softmax, and `wgmma` for P·V, then free the slot. While one warpgroup is in its
  softmax, the other's matrix products keep the tensor cores busy.

Importing this module needs Triton with Gluon (3.6 on the GPU machine); nothing imports it on CPU.
Status (2026-12-08): compiled offline for sm_90a without spills, not yet run on a GPU
(benchmarks/results/kernel_shared_prefix_notes.md says what to run).
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)

ROWS_PER_CONSUMER = gl.constexpr(64)  # one warpgroup's wgmma tile
# The consumers' order (the kernel's SCHEDULE): each block's Q·Kᵀ, softmax and P·V in turn;
# FA3's order, block j's Q·Kᵀ and softmax while block j - 1's P·V runs; and that order with the
# two consumers taking turns to issue each step's matrix products, so that one's softmax runs
# while the other's products do.
SERIAL = gl.constexpr(0)
OVERLAP = gl.constexpr(1)
PINGPONG = gl.constexpr(2)
BLOCK_M = gl.constexpr(128)  # query rows of a program: two consumers
# Registers a thread of the worker partitions (the second consumer, the loader) under the launch's
# maxnreg of 168; the first consumer gets the rest: 3 warpgroups * 168 - 224 - 56 = 224. Offline
# (Triton 3.6, sm_90a) 232 / 40 spilled up to 24 bytes once the loader prefetched page ids.
CONSUMER_REGS = gl.constexpr(224)
LOADER_REGS = gl.constexpr(56)


@gluon.jit
def _chunk(dims, BLOCK_N: gl.constexpr):
    """This program's prefix chunk: its first token, its end, and its number of KV blocks."""
    prefix_len, chunk_len = dims[3], dims[4]
    start = gl.program_id(2) * chunk_len
    end = gl.minimum(start + chunk_len, prefix_len)
    return start, end, gl.cdiv(end - start, BLOCK_N)


@gluon.jit
def _load_partition(smem, ptrs, dims, strides, scale_log2, GROUP: gl.constexpr,
                    HEAD_DIM: gl.constexpr, PAGE_SIZE: gl.constexpr, BLOCK_N: gl.constexpr,
                    STAGES: gl.constexpr, SCHEDULE: gl.constexpr):  # fmt: skip
    """Four warps: gather each KV block of the chunk into its slot once both consumers freed it.
    (Worker partitions share one signature, so it takes arguments only the consumers read.)"""
    k_bufs, v_bufs, ready, empty = smem[0], smem[1], smem[2], smem[3]
    stride_page, stride_kv, stride_slot = strides[2], strides[3], strides[4]
    row_threads: gl.constexpr = HEAD_DIM // 8  # 16 bytes a thread, a row's threads side by side
    layout: gl.constexpr = gl.BlockedLayout(
        [1, 8], [32 // row_threads, row_threads], [4, 1], [1, 0]
    )
    start, end, num_blocks = _chunk(dims, BLOCK_N)
    kv_ptr = ptrs[1] + gl.program_id(1) * strides[5]
    d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, layout))
    tok = start + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, layout))
    next_page = gl.load(ptrs[2] + tok // PAGE_SIZE, mask=tok < end, other=0)
    for j in range(num_blocks):
        # block j + 1's page ids load while this block waits for its slot and issues its copies
        page = next_page.to(gl.int64)
        next_tok = tok + BLOCK_N
        next_page = gl.load(ptrs[2] + next_tok // PAGE_SIZE, mask=next_tok < end, other=0)
        slot = j % STAGES
        mbarrier.wait(empty.index(slot), ((j // STAGES) & 1) ^ 1)
        ok = tok < end
        rows = kv_ptr + page * stride_page + (tok % PAGE_SIZE) * stride_slot
        k_ptrs = rows[:, None] + d[None, :]
        async_copy.async_copy_global_to_shared(k_bufs.index(slot), k_ptrs, mask=ok[:, None])
        v_ptrs = k_ptrs + stride_kv
        async_copy.async_copy_global_to_shared(v_bufs.index(slot), v_ptrs, mask=ok[:, None])
        async_copy.mbarrier_arrive(ready.index(slot), increment_count=False)
        tok = next_tok


@gluon.jit
def _consume(smem, ptrs, dims, strides, scale_log2, GROUP: gl.constexpr, HEAD_DIM: gl.constexpr,
             BLOCK_N: gl.constexpr, STAGES: gl.constexpr, SCHEDULE: gl.constexpr,
             WARPGROUP: gl.constexpr):  # fmt: skip
    """One warpgroup: its 64 query rows against every KV block of the chunk, then the partial."""
    ROWS: gl.constexpr = ROWS_PER_CONSUMER
    s_layout: gl.constexpr = gl.NVMMADistributedLayout([3, 0], [4, 1], [16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout([3, 0], [4, 1], [16, HEAD_DIM, 16])
    q_operand: gl.constexpr = gl.DotOperandLayout(0, s_layout, 2)
    p_operand: gl.constexpr = gl.DotOperandLayout(0, o_layout, 2)
    first_row = gl.program_id(0) * BLOCK_M + WARPGROUP * ROWS
    q = gl.convert_layout(_load_q(ptrs[0], first_row, dims, strides, GROUP, HEAD_DIM), q_operand)
    start, end, num_blocks = _chunk(dims, BLOCK_N)
    cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
    zero_s = gl.zeros([ROWS, BLOCK_N], gl.float32, s_layout)
    m_i = gl.full([ROWS], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
    l_i = gl.zeros([ROWS], gl.float32, gl.SliceLayout(1, s_layout))
    acc = gl.zeros([ROWS, HEAD_DIM], gl.float32, o_layout)
    state = (m_i, l_i, acc)
    blocks = (start, end, num_blocks, cols, scale_log2)
    if SCHEDULE >= OVERLAP:
        m_i, l_i, acc = _attend_overlapped(q, zero_s, smem, blocks, state, p_operand, STAGES,
                                           WARPGROUP, SCHEDULE == PINGPONG)  # fmt: skip
    else:
        m_i, l_i, acc = _attend_serial(q, zero_s, smem, blocks, state, p_operand, STAGES)
    _store_partial(ptrs, dims, first_row, m_i, l_i, acc, GROUP, HEAD_DIM)


@gluon.jit
def _attend_serial(q, zero_s, smem, blocks, state, p_operand: gl.constexpr,
                   STAGES: gl.constexpr):  # fmt: skip
    """Each block's Q·Kᵀ, softmax and P·V in turn; returns the final (m_i, l_i, acc)."""
    v_bufs, empty = smem[1], smem[3]
    start, end, num_blocks, cols, scale_log2 = blocks
    m_i, l_i, acc = state
    for j in range(num_blocks):
        s = _issue_scores(q, zero_s, smem, j, STAGES, 0, False)
        s = warpgroup_mma_wait(0, deps=(s,))
        m_i, alpha, p, l_i = _online_softmax(s, j, start, end, cols, scale_log2, m_i, l_i)
        acc = _rescale(acc, alpha)
        p = gl.convert_layout(p.to(v_bufs.dtype), p_operand)
        acc = warpgroup_mma(p, v_bufs.index(j % STAGES), acc, is_async=True)
        acc, p = warpgroup_mma_wait(0, deps=(acc, p))
        mbarrier.arrive(empty.index(j % STAGES), count=1)
    return m_i, l_i, acc


@gluon.jit
def _attend_overlapped(q, zero_s, smem, blocks, state, p_operand: gl.constexpr,
                       STAGES: gl.constexpr, WARPGROUP: gl.constexpr,
                       PINGPONG: gl.constexpr):  # fmt: skip
    """FA3's order: block j's Q·Kᵀ and softmax while block j - 1's P·V is in flight; with
    PINGPONG the two consumers also take turns issuing each step's matrix products."""
    v_bufs, empty = smem[1], smem[3]
    start, end, num_blocks, cols, scale_log2 = blocks
    m_i, l_i, acc = state
    s = _issue_scores(q, zero_s, smem, 0, STAGES, WARPGROUP, PINGPONG)
    _pass_turn(smem, WARPGROUP, PINGPONG)
    s = warpgroup_mma_wait(0, deps=(s,))
    m_i, alpha, p, l_i = _online_softmax(s, 0, start, end, cols, scale_log2, m_i, l_i)
    p = gl.convert_layout(p.to(v_bufs.dtype), p_operand)
    for j in range(1, num_blocks):
        s = _issue_scores(q, zero_s, smem, j, STAGES, WARPGROUP, PINGPONG)
        issued = p  # a register operand: kept alive until its wgmma is waited for
        acc = warpgroup_mma(issued, v_bufs.index((j - 1) % STAGES), acc, is_async=True)
        _pass_turn(smem, WARPGROUP, PINGPONG)
        s = warpgroup_mma_wait(1, deps=(s,))
        m_i, alpha, p, l_i = _online_softmax(s, j, start, end, cols, scale_log2, m_i, l_i)
        acc, issued = warpgroup_mma_wait(0, deps=(acc, issued))
        mbarrier.arrive(empty.index((j - 1) % STAGES), count=1)
        acc = _rescale(acc, alpha)
        p = gl.convert_layout(p.to(v_bufs.dtype), p_operand)
    last = (num_blocks - 1) % STAGES
    _take_turn(smem, num_blocks, WARPGROUP, PINGPONG)
    acc = warpgroup_mma(p, v_bufs.index(last), acc, is_async=True)
    _pass_turn(smem, WARPGROUP, PINGPONG)
    acc, p = warpgroup_mma_wait(0, deps=(acc, p))
    mbarrier.arrive(empty.index(last), count=1)
    return m_i, l_i, acc


@gluon.jit
def _rescale(acc, alpha):
    """The running output scaled by the old state's factor (alpha in the scores' row layout)."""
    return acc * gl.convert_layout(alpha, gl.SliceLayout(1, acc.type.layout))[:, None]


@gluon.jit
def _issue_scores(q, zero_s, smem, j, STAGES: gl.constexpr, WARPGROUP: gl.constexpr,
                  PINGPONG: gl.constexpr):  # fmt: skip
    """Wait for block j's slot (and with PINGPONG for turn j) and start its Q·Kᵀ
    (asynchronous: wait on the returned token)."""
    k_bufs, ready = smem[0], smem[2]
    mbarrier.wait(ready.index(j % STAGES), (j // STAGES) & 1)
    fence_async_shared()  # the loader's cp.async wrote the slot; wgmma reads it async
    _take_turn(smem, j, WARPGROUP, PINGPONG)
    k_t = k_bufs.index(j % STAGES).permute((1, 0))
    return warpgroup_mma(q, k_t, zero_s, use_acc=False, is_async=True)


@gluon.jit
def _take_turn(smem, turn, WARPGROUP: gl.constexpr, PINGPONG: gl.constexpr):
    """With PINGPONG, wait until the other consumer has issued its products of turn `turn`
    (the first consumer goes first: a fresh barrier's parity-1 wait passes at once)."""
    if PINGPONG:
        mbarrier.wait(smem[4].index(WARPGROUP), (turn & 1) ^ (1 - WARPGROUP))


@gluon.jit
def _pass_turn(smem, WARPGROUP: gl.constexpr, PINGPONG: gl.constexpr):
    """With PINGPONG, let the other consumer issue its products of this turn."""
    if PINGPONG:
        mbarrier.arrive(smem[4].index(1 - WARPGROUP), count=1)


@gluon.jit
def _online_softmax(s, j, start, end, cols, scale_log2, m_i, l_i):
    """Block j's scores into weights: returns the new max, the old state's rescale, P and sum."""
    s = gl.where((start + j * s.shape[1] + cols < end)[None, :], s, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s, 1) * scale_log2)
    alpha = gl.exp2(m_i - m_new)
    p = gl.exp2(s * scale_log2 - m_new[:, None])
    return m_new, alpha, p, l_i * alpha + gl.sum(p, 1)


@gluon.jit
def _load_q(q_ptr, first_row, dims, strides, GROUP: gl.constexpr, HEAD_DIM: gl.constexpr):
    """The warpgroup's query rows: row r is query head kv_head * GROUP + r % GROUP of sequence
    r // GROUP (zeros past the batch)."""
    row_threads: gl.constexpr = HEAD_DIM // 8  # 16 bytes a thread, a row's threads side by side
    layout: gl.constexpr = gl.BlockedLayout(
        [1, 8], [32 // row_threads, row_threads], [4, 1], [1, 0]
    )
    rows = first_row + gl.arange(0, ROWS_PER_CONSUMER, layout=gl.SliceLayout(1, layout))
    d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, layout))
    head = gl.program_id(1) * GROUP + rows % GROUP
    offsets = (rows // GROUP) * strides[0] + head * strides[1]
    rows_ok = (rows < dims[0] * GROUP)[:, None]
    return gl.load(q_ptr + offsets[:, None] + d[None, :], mask=rows_ok, other=0.0)


@gluon.jit
def _store_partial(ptrs, dims, first_row, m_i, l_i, acc, GROUP: gl.constexpr,
                   HEAD_DIM: gl.constexpr):  # fmt: skip
    """Write the rows' normalized output and base-2 LSE into this split's slot."""
    o_part_ptr, lse_part_ptr = ptrs[3], ptrs[4]
    batch, num_heads, num_slots = dims[0], dims[1], dims[2]
    kv_head, split = gl.program_id(1), gl.program_id(2)
    o_rows: gl.constexpr = gl.SliceLayout(1, acc.type.layout)
    rows = first_row + gl.arange(0, ROWS_PER_CONSUMER, layout=o_rows)
    row = (rows // GROUP) * num_heads + kv_head * GROUP + rows % GROUP
    d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, acc.type.layout))
    out = acc / gl.convert_layout(l_i, o_rows)[:, None]
    o_ptrs = o_part_ptr + (row[:, None] * num_slots + split) * HEAD_DIM + d[None, :]
    gl.store(o_ptrs, out.to(o_part_ptr.dtype.element_ty), mask=(rows < batch * GROUP)[:, None])
    lse = gl.convert_layout(m_i + gl.log2(l_i), o_rows)
    gl.store(lse_part_ptr + row * num_slots + split, lse, mask=rows < batch * GROUP)


@gluon.jit
def _consume_first(smem, ptrs, dims, strides, scale_log2, GROUP: gl.constexpr,
                   HEAD_DIM: gl.constexpr, PAGE_SIZE: gl.constexpr, BLOCK_N: gl.constexpr,
                   STAGES: gl.constexpr, SCHEDULE: gl.constexpr):  # fmt: skip
    _consume(smem, ptrs, dims, strides, scale_log2, GROUP, HEAD_DIM, BLOCK_N, STAGES, SCHEDULE, 0)


@gluon.jit
def _consume_second(smem, ptrs, dims, strides, scale_log2, GROUP: gl.constexpr,
                    HEAD_DIM: gl.constexpr, PAGE_SIZE: gl.constexpr, BLOCK_N: gl.constexpr,
                    STAGES: gl.constexpr, SCHEDULE: gl.constexpr):  # fmt: skip
    _consume(smem, ptrs, dims, strides, scale_log2, GROUP, HEAD_DIM, BLOCK_N, STAGES, SCHEDULE, 1)


@gluon.jit(do_not_specialize=["batch", "prefix_len"])
def ws_prefix_kernel(
    q_ptr,  # [batch, num_heads, HEAD_DIM]
    cache_ptr,  # [num_blocks, 2, PAGE_SIZE, num_kv_heads, HEAD_DIM]
    prefix_pages_ptr,  # [>= ceil(prefix_len / PAGE_SIZE)] int32
    o_part_ptr,  # [batch, num_heads, num_slots, HEAD_DIM]
    lse_part_ptr,  # [batch, num_heads, num_slots] float32
    batch,
    num_heads,
    num_slots,
    prefix_len,
    chunk_len,  # prefix tokens per split, a multiple of BLOCK_N
    stride_qb,
    stride_qh,
    stride_page,
    stride_kv,
    stride_slot,
    stride_head,
    scale_log2,
    GROUP: gl.constexpr,
    HEAD_DIM: gl.constexpr,
    PAGE_SIZE: gl.constexpr,
    BLOCK_N: gl.constexpr,
    STAGES: gl.constexpr,
    SCHEDULE: gl.constexpr,  # the consumers' order: SERIAL, OVERLAP or PINGPONG
):
    """Program (row tile of BLOCK_M rows, kv head, split), launched with num_warps=4 and
    maxnreg=168: the first consumer is the default partition; the workers are the second
    consumer and the loader, 4 warps each."""
    layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16)
    dtype: gl.constexpr = cache_ptr.dtype.element_ty
    k_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], layout)
    v_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turns = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(turns.index(i), count=1)  # consumer i may issue its next products
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=4 * 32)  # every loader thread's copies landed
        mbarrier.init(empty.index(i), count=2)  # both consumers are done with the slot
    smem = (k_bufs, v_bufs, ready, empty, turns)
    ptrs = (q_ptr, cache_ptr, prefix_pages_ptr, o_part_ptr, lse_part_ptr)
    dims = (batch, num_heads, num_slots, prefix_len, chunk_len)
    strides = (stride_qb, stride_qh, stride_page, stride_kv, stride_slot, stride_head)
    # constexprs keep their kind only when written in each partition's argument tuple
    gl.warp_specialize(
        [
            (_consume_first, (smem, ptrs, dims, strides, scale_log2, GROUP, HEAD_DIM, PAGE_SIZE,
                              BLOCK_N, STAGES, SCHEDULE)),
            (_consume_second, (smem, ptrs, dims, strides, scale_log2, GROUP, HEAD_DIM, PAGE_SIZE,
                               BLOCK_N, STAGES, SCHEDULE)),
            (_load_partition, (smem, ptrs, dims, strides, scale_log2, GROUP, HEAD_DIM, PAGE_SIZE,
                               BLOCK_N, STAGES, SCHEDULE)),
        ],
        [4, 4],
        [CONSUMER_REGS, LOADER_REGS],
    )  # fmt: skip
