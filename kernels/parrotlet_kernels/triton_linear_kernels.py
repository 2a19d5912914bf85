"""Triton kernels behind `triton_linear.py`: a weight-streaming matmul for a few rows of input.

Imported on the first launch only (this module imports triton).
"""

from __future__ import annotations

import triton
import triton.language as tl

from parrotlet_kernels.programmatic_launch_kernels import wait_for_inputs


@triton.jit
def small_batch_linear_kernel(
    x_ptr,  # [M, K]
    w_ptr,  # [N, K] contiguous; with SWIGLU [2 * N, K]: gate rows, then up rows
    b_ptr,  # [N] or unused
    y_ptr,  # [M, N]
    M,
    N,
    stride_xm,
    stride_ym,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SWIGLU: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    PDL: tl.constexpr,  # launched with programmatic dependent launch (programmatic_launch.py)
):
    """y[:, n-block] = x @ w[n-block].T, with the weight rows as the matmul's M side.

    Each program owns BLOCK_N output features and streams their weight rows once, in BLOCK_K
    slices; the few input rows (padded to BLOCK_M >= 16 for the tensor cores) are re-read from
    L2. With SWIGLU the program also streams the matching up rows and writes
    `silu(gate) * up` from its float32 accumulators. With PDL the program lets the next kernel
    launch, then waits for the kernel before it (whose output x is).
    """
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    offs_m = tl.arange(0, BLOCK_M)  # [BLOCK_M]
    offs_k = tl.arange(0, BLOCK_K)  # [BLOCK_K]
    rows = offs_m[None, :] < M  # [1, BLOCK_M]
    w_ptrs = w_ptr + offs_n[:, None] * K + offs_k[None, :]  # [BLOCK_N, BLOCK_K]
    x_ptrs = x_ptr + offs_m[None, :] * stride_xm + offs_k[:, None]  # [BLOCK_K, BLOCK_M]
    wait_for_inputs(PDL)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    up = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k in tl.range(0, K, BLOCK_K, num_stages=NUM_STAGES):
        x = tl.load(x_ptrs + k, mask=rows, other=0.0)  # [BLOCK_K, BLOCK_M]
        acc = tl.dot(tl.load(w_ptrs + k), x, acc)
        if SWIGLU:
            up = tl.dot(tl.load(w_ptrs + N * K + k), x, up)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n).to(tl.float32)[:, None]
    if SWIGLU:
        acc = acc * tl.sigmoid(acc) * up
    y_ptrs = y_ptr + offs_m[None, :] * stride_ym + offs_n[:, None]  # [BLOCK_N, BLOCK_M]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=rows)
