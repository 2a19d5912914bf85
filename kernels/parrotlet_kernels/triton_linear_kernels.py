"""Triton kernels behind `triton_linear.py`: a weight-streaming matmul for a few rows of input.

Imported on the first launch only (this module imports triton).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def small_batch_linear_kernel(
    x_ptr,  # [M, K]
    w_ptr,  # [N, K] contiguous; with SWIGLU [2 * N, K]: gate rows, then up rows
    b_ptr,  # [N] or unused
    y_ptr,  # [M, N]
    residual_ptr,  # [M, K] (NORM and HAS_RESIDUAL)
    sum_ptr,  # [M, K]: x + residual is written here (NORM and HAS_RESIDUAL)
    norm_w_ptr,  # [K] (NORM)
    eps,  # (NORM)
    M,
    N,
    stride_xm,
    stride_ym,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SWIGLU: tl.constexpr,
    NORM: tl.constexpr,  # the input is rmsnorm(x (+ residual)) with weight norm_w and eps
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """y[:, n-block] = x @ w[n-block].T, with the weight rows as the matmul's M side.

    Each program owns BLOCK_N output features and streams their weight rows once, in BLOCK_K
    slices; the few input rows (padded to BLOCK_M >= 16 for the tensor cores) are re-read from
    L2. With SWIGLU the program also streams the matching up rows and writes
    `silu(gate) * up` from its float32 accumulators. With NORM the input rows are
    RMS-normalized on the way: each slice (plus the residual's, in float32; program 0 writes
    that sum) is scaled by the norm weight before the product, and the rows' sums of squares,
    gathered over the same slices, scale the accumulators at the end.
    """
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    offs_m = tl.arange(0, BLOCK_M)  # [BLOCK_M]
    offs_k = tl.arange(0, BLOCK_K)  # [BLOCK_K]
    rows = offs_m[None, :] < M  # [1, BLOCK_M]
    w_ptrs = w_ptr + offs_n[:, None] * K + offs_k[None, :]  # [BLOCK_N, BLOCK_K]
    x_ptrs = x_ptr + offs_m[None, :] * stride_xm + offs_k[:, None]  # [BLOCK_K, BLOCK_M]
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    up = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    squares = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k in tl.range(0, K, BLOCK_K, num_stages=NUM_STAGES):
        x = tl.load(x_ptrs + k, mask=rows, other=0.0)  # [BLOCK_K, BLOCK_M]
        if NORM:
            x, squares = _norm_slice(
                x, k, offs_k, offs_m, rows, residual_ptr, sum_ptr, norm_w_ptr, squares,
                stride_xm, pid, HAS_RESIDUAL,
            )  # fmt: skip
        acc = tl.dot(tl.load(w_ptrs + k), x, acc)
        if SWIGLU:
            up = tl.dot(tl.load(w_ptrs + N * K + k), x, up)
    if NORM:
        rstd = tl.rsqrt(squares / K + eps)[None, :]  # [1, BLOCK_M]
        acc, up = acc * rstd, up * rstd
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n).to(tl.float32)[:, None]
    if SWIGLU:
        acc = acc * tl.sigmoid(acc) * up
    y_ptrs = y_ptr + offs_m[None, :] * stride_ym + offs_n[:, None]  # [BLOCK_N, BLOCK_M]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=rows)


@triton.jit
def _norm_slice(
    x,  # [BLOCK_K, BLOCK_M] input slice k (rows as columns)
    k,
    offs_k,
    offs_m,
    rows,  # [1, BLOCK_M] bool
    residual_ptr,
    sum_ptr,
    norm_w_ptr,
    squares,  # [BLOCK_M] float32, the rows' sums of squares so far
    stride_m,  # of x, residual and sum alike
    pid,  # program 0 writes x + residual
    HAS_RESIDUAL: tl.constexpr,
):
    """(the slice times the norm weight, in x's dtype; squares plus the slice's). Without
    the rows' rsqrt, which needs every slice: the caller scales its accumulators by it."""
    xf = x.to(tl.float32)
    if HAS_RESIDUAL:
        at = offs_m[None, :] * stride_m + (k + offs_k)[:, None]  # [BLOCK_K, BLOCK_M]
        xf += tl.load(residual_ptr + at, mask=rows, other=0.0).to(tl.float32)
        if pid == 0:
            tl.store(sum_ptr + at, xf.to(x.dtype), mask=rows)
    squares += tl.sum(xf * xf, 0)
    weight = tl.load(norm_w_ptr + k + offs_k).to(tl.float32)[:, None]  # [BLOCK_K, 1]
    return (xf * weight).to(x.dtype), squares
