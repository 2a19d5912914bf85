"""Linear layers of decode steps (a few rows) as one weight-streaming Triton kernel per layer.

At a handful of rows a linear layer is a read of its weight. cuBLAS's kernels for Llama-3-8B's
decode shapes reach 67-94% of the copy bandwidth (o_proj the least; qkv and down_proj run split-K
plus a reduce kernel), and SwiGLU's `silu(gate) * up` is a kernel of its own. The model's fused
path (CUDA, 16-bit) calls `linear` and `swiglu`: they run the Triton kernel where `plan_linear`
returns a launch (`swiglu` forms the product in the gate/up kernel's epilogue), and cuBLAS / the
given elementwise kernel otherwise. Importing this module does not import triton.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F

from parrotlet_kernels import programmatic_launch

# Rows up to which the kernel runs (64-row tiles at most). On the H100 (2026-12-06,
# benchmarks/kernel_linear.py) it beat or tied cuBLAS on Llama-3-8B's layers at 1-32 rows; at 64
# rows it won gate_up (86 vs 93 us) and lm_head (366 vs 393) and lost 0.6 us on o_proj and down.
MAX_ROWS = 64
_SMEM_BYTES = 200 * 1024  # for the pipeline's stages; an H100 SM has 227 KB
_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class LinearLaunch:
    """Grid `n // block_n`; each program streams `block_n` weight rows in `block_k` slices."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 4

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_k"):
            size = getattr(self, name)
            if size < 16 or size & (size - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {size}")
        for name in ("num_warps", "num_stages"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def fits(self, m: int, n: int, k: int) -> bool:
        return m <= self.block_m and n % self.block_n == 0 and k % self.block_k == 0


def plan_linear(m: int, n: int, k: int, weight_tiles: int = 1) -> LinearLaunch | None:
    """The launch for `[m, k] @ [n, k].T`, or None where cuBLAS should run it (more than
    MAX_ROWS rows, or shapes no block divides).

    64 weight rows per program (`weight_tiles` such blocks with SwiGLU's gate and up) in
    128-wide slices, up to 5 slices in flight as shared memory allows: on the H100 this beat
    narrower programs that fill every SM (benchmarks/kernel_linear.py --sweep); narrower blocks
    where 64 does not divide n. The input rows are padded to a tensor-core tile of 16, 32 or 64.
    """
    if not 1 <= m <= MAX_ROWS:
        return None
    block_k = next((b for b in (128, 64) if k % b == 0), None)
    block_n = next((b for b in (64, 32, 16) if n % b == 0), None)
    if block_k is None or block_n is None:
        return None
    block_m = max(16, 1 << (m - 1).bit_length())  # 16: the tensor cores' smallest tile
    stage_bytes = 2 * block_k * (weight_tiles * block_n + block_m)  # 16-bit weight and x slices
    stages = min(5, _SMEM_BYTES // stage_bytes)
    return LinearLaunch(block_m=block_m, block_n=block_n, block_k=block_k, num_stages=stages)


def linear(
    x: torch.Tensor,  # [m, k]
    weight: torch.Tensor,  # [n, k]
    bias: torch.Tensor | None = None,  # [n]
    launch: LinearLaunch | None = None,
    programmatic: bool = False,
) -> torch.Tensor:  # [m, n]
    """`F.linear(x, weight, bias)`, through the Triton kernel where it applies; with
    `programmatic` the kernel is launched with PDL where the device supports it."""
    launch = launch or _plan(x, weight, weight.shape[0])
    if launch is None:
        return F.linear(x, weight, bias)
    return _launch(x, weight, bias, launch, swiglu=False, programmatic=programmatic)


def swiglu(
    x: torch.Tensor,  # [m, k]
    gate_up_weight: torch.Tensor,  # [2 * n, k]: gate rows, then up rows
    silu_and_mul: Callable[[torch.Tensor], torch.Tensor],
    launch: LinearLaunch | None = None,
    programmatic: bool = False,
) -> torch.Tensor:  # [m, n]
    """`silu_and_mul(F.linear(x, gate_up_weight))`, as one Triton kernel where it applies
    (`programmatic`: as in `linear`)."""
    if gate_up_weight.shape[0] % 2:
        raise ValueError(
            f"gate_up_weight has {gate_up_weight.shape[0]} rows, expected an even number "
            "(gate rows, then as many up rows)"
        )
    launch = launch or _plan(x, gate_up_weight, gate_up_weight.shape[0] // 2, weight_tiles=2)
    if launch is None:
        return silu_and_mul(F.linear(x, gate_up_weight))
    return _launch(x, gate_up_weight, None, launch, swiglu=True, programmatic=programmatic)


def reference_silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """`silu(gate) * up` in float32, rounded once to the input dtype (flashinfer's rounding)."""
    gate, up = gate_up.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(gate_up.dtype)


def _plan(
    x: torch.Tensor, weight: torch.Tensor, n: int, weight_tiles: int = 1
) -> LinearLaunch | None:
    if not (
        x.is_cuda
        and x.dim() == 2
        and x.dtype in _DTYPES
        and weight.dtype == x.dtype
        and weight.is_contiguous()
        and x.stride(-1) == 1
        and triton_available()
    ):
        return None
    return plan_linear(x.shape[0], n, weight.shape[1], weight_tiles)


def _launch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    launch: LinearLaunch,
    *,
    swiglu: bool,
    programmatic: bool,
) -> torch.Tensor:
    m, (n, k) = x.shape[0], weight.shape
    n = n // 2 if swiglu else n
    if x.shape[1] != k:
        raise ValueError(f"x has {x.shape[1]} features, the weight {k}")
    if not launch.fits(m, n, k):
        raise ValueError(f"{launch} does not fit a [{m}, {k}] x [{n}, {k}].T product")
    from parrotlet_kernels.triton_linear_kernels import small_batch_linear_kernel

    pdl = programmatic_launch.granted(programmatic, x.device)
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    small_batch_linear_kernel[(n // launch.block_n,)](
        x, weight, bias if bias is not None else weight, y, m, n, x.stride(0), y.stride(0),
        K=k, HAS_BIAS=bias is not None, SWIGLU=swiglu, BLOCK_M=launch.block_m,
        BLOCK_N=launch.block_n, BLOCK_K=launch.block_k, NUM_STAGES=launch.num_stages,
        PDL=pdl, num_warps=launch.num_warps, launch_pdl=pdl,
    )  # fmt: skip
    return y


@cache
def triton_available() -> bool:
    """Whether triton is installed (this module never imports it itself)."""
    return importlib.util.find_spec("triton") is not None
