"""Triton kernels behind `triton_linear.py`: a weight-streaming matmul for a few rows of input.

Imported on the first launch only (this module imports triton).
"""

from __future__ import annotations

import triton
import triton.language as tl

from parrotlet_kernels.programmatic_launch_kernels import wait_for_inputs


@triton.jit
def small_batch_linear_kernel(
    x_ptr,  # [M, K]; with NORMED the rows times the norm's weight
    w_ptr,  # [N, K] contiguous; with SWIGLU [2 * N, K]: gate rows, then up rows
    b_ptr,  # [N] or unused
    y_ptr,  # [M, N]
    residual_ptr,  # [M, N] with HAS_RESIDUAL, else unused
    squares_ptr,  # [M, P] float32 with NORMED: the rows' sums of squares in P parts
    next_w_ptr,  # [N] with NEXT_NORM: the weight of the norm y goes into
    scaled_ptr,  # [M, N] with NEXT_NORM: receives y * next_w
    next_squares_ptr,  # [M, N // BLOCK_N] float32 with NEXT_NORM: receives y's sums of squares
    eps,  # float32, with NORMED
    M,
    N,
    P,
    stride_xm,
    stride_ym,
    stride_rm,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,  # y = x @ w.T + b + residual
    SWIGLU: tl.constexpr,
    NORMED: tl.constexpr,  # the input rows are RMS-normalized: x_ptr holds them times the weight
    NEXT_NORM: tl.constexpr,  # write what the NORMED launch reading y needs
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,  # >= P
    NUM_STAGES: tl.constexpr,
    PDL: tl.constexpr,  # launched with programmatic dependent launch (programmatic_launch.py)
):
    """y[:, n-block] = x @ w[n-block].T, with the weight rows as the matmul's M side.

    Each program owns BLOCK_N output features and streams their weight rows once, in BLOCK_K
    slices; the few input rows (padded to BLOCK_M >= 16 for the tensor cores) are re-read from
    L2. With SWIGLU the program also streams the matching up rows and writes
    `silu(gate) * up` from its float32 accumulators; with HAS_RESIDUAL it adds the residual
    rows to its float32 outputs. With PDL the program lets the next kernel launch, then waits
    for the kernel before it (whose output x is).

    An RMSNorm between two launches costs neither a kernel nor work in the weight loop: the
    launch before it (NEXT_NORM) writes, next to y, y times the norm's weight and each program's
    sums of squares of its features; the launch after it (NORMED) streams the former as its
    input and scales its float32 accumulators by rsqrt(mean square + eps) at the end, a row's
    scale being common to all its products.
    """
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    offs_m = tl.arange(0, BLOCK_M)  # [BLOCK_M]
    offs_k = tl.arange(0, BLOCK_K)  # [BLOCK_K]
    rows = offs_m[None, :] < M  # [1, BLOCK_M]
    w_ptrs = w_ptr + offs_n[:, None] * K + offs_k[None, :]  # [BLOCK_N, BLOCK_K]
    x_ptrs = x_ptr + offs_m[None, :] * stride_xm + offs_k[:, None]  # [BLOCK_K, BLOCK_M]
    wait_for_inputs(PDL)
    if NORMED:  # loaded before the loop, used after it
        offs_p = tl.arange(0, BLOCK_P)
        squares = tl.load(squares_ptr + offs_m[None, :] * P + offs_p[:, None],
                          mask=rows & (offs_p[:, None] < P), other=0.0)  # fmt: skip
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    up = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k in tl.range(0, K, BLOCK_K, num_stages=NUM_STAGES):
        x = tl.load(x_ptrs + k, mask=rows, other=0.0)  # [BLOCK_K, BLOCK_M]
        acc = tl.dot(tl.load(w_ptrs + k), x, acc)
        if SWIGLU:
            up = tl.dot(tl.load(w_ptrs + N * K + k), x, up)
    if NORMED:
        scale = tl.rsqrt(tl.sum(squares, axis=0) / K + eps)  # [BLOCK_M]
        acc *= scale[None, :]
        if SWIGLU:
            up *= scale[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n).to(tl.float32)[:, None]
    if SWIGLU:
        acc = acc * tl.sigmoid(acc) * up
    if HAS_RESIDUAL:
        r_offs = offs_m[None, :] * stride_rm + offs_n[:, None]  # [BLOCK_N, BLOCK_M]
        acc += tl.load(residual_ptr + r_offs, mask=rows, other=0.0).to(tl.float32)
    y = acc.to(y_ptr.dtype.element_ty)
    y_offs = offs_m[None, :] * stride_ym + offs_n[:, None]  # [BLOCK_N, BLOCK_M]
    tl.store(y_ptr + y_offs, y, mask=rows)
    if NEXT_NORM:
        y32 = y.to(tl.float32)  # the rows as stored
        next_w = tl.load(next_w_ptr + offs_n).to(tl.float32)[:, None]  # [BLOCK_N, 1]
        tl.store(scaled_ptr + y_offs, (y32 * next_w).to(y.dtype), mask=rows)
        parts = N // BLOCK_N
        tl.store(next_squares_ptr + offs_m * parts + pid, tl.sum(y32 * y32, axis=0),
                 mask=offs_m < M)  # fmt: skip
