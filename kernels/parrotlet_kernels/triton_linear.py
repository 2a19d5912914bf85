"""Linear layers of decode steps (a few rows) as one weight-streaming Triton kernel per layer.

At a handful of rows a linear layer is a read of its weight. cuBLAS's kernels for Llama-3-8B's
decode shapes reach 67-94% of the copy bandwidth (o_proj the least; qkv and down_proj run split-K
plus a reduce kernel), and SwiGLU's `silu(gate) * up` is a kernel of its own. The model's fused
path (CUDA, 16-bit) calls these functions: they run the Triton kernel where `plan_linear`
returns a launch, and cuBLAS / the given elementwise kernels otherwise. The kernel also takes in
the work around a layer: `swiglu` forms the product in the gate/up kernel's epilogue, `linear`
adds the residual stream in its epilogue, and an RMSNorm between two launches runs in neither a
kernel of its own nor the weight loop (at one row a norm kernel is ~2.8 us of launch and latency
for 16 KB, twice a decoder layer; a norm in the weight loop cost ~15 us a layer on the H100):
`linear_into_norm` writes the rows scaled by the norm's weight and their sums of squares in its
epilogue, and `norm_linear` / `norm_swiglu` stream the scaled rows and apply the rows' rsqrt to
their accumulators. Importing this module does not import triton.
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
# Rows from which `linear_into_norm` (o_proj and down_proj) launches with PDL when asked to. On
# the H100 (2026-12-07, Llama-3-8B, profile_decode_step.py) these launches without PDL took the
# batch-1 step from 5.739 to 5.631 ms but batch 32's from 6.128 to 6.393; the launches reading
# the normed rows gained nothing without it. With this rule engine_decode's batch-1 step went
# from 1.162x to 1.141x the floor, batch 32 unchanged (benchmarks/results/decode_step_notes.md).
NORM_WRITER_PDL_ROWS = 2
_SMEM_BYTES = 200 * 1024  # for the pipeline's stages; an H100 SM has 227 KB
_DTYPES = (torch.float16, torch.bfloat16)

# rmsnorm(x, weight, eps) -> rmsnorm(x) * weight (flashinfer.rmsnorm's signature)
RMSNormFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
SiluAndMul = Callable[[torch.Tensor], torch.Tensor]


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


@dataclass(frozen=True)
class NormedRows:
    """Rows on their way into an RMSNorm: `rmsnorm(rows) * weight` is what the next layer reads.

    Where a fused launch wrote the rows (`linear_into_norm`), it also wrote `scaled` (the rows
    times the weight, rounded) and `square_sums` (the rows' sums of squares, in parts): the
    fused launch reading them (`norm_linear`, `norm_swiglu`) then needs no norm kernel. Elsewhere
    they are None and the norm runs as a kernel of its own.
    """

    rows: torch.Tensor  # [m, k]
    weight: torch.Tensor  # [k]
    eps: float
    scaled: torch.Tensor | None = None  # [m, k]
    square_sums: torch.Tensor | None = None  # [m, parts] float32

    def __post_init__(self) -> None:
        m, k = self.rows.shape
        if self.weight.shape != (k,):
            raise ValueError(f"the norm's weight has shape {tuple(self.weight.shape)}, "
                             f"expected ({k},)")  # fmt: skip
        if self.scaled is not None and self.scaled.shape != (m, k):
            raise ValueError(f"scaled has shape {tuple(self.scaled.shape)}, expected ({m}, {k})")
        if self.square_sums is not None and self.square_sums.shape[0] != m:
            raise ValueError(f"square_sums has {self.square_sums.shape[0]} rows, expected {m}")

    def normed(self, rmsnorm: RMSNormFn) -> torch.Tensor:
        """The norm's output, computed by the norm kernel `rmsnorm`."""
        return rmsnorm(self.rows, self.weight, self.eps)


def linear(
    x: torch.Tensor,  # [m, k]
    weight: torch.Tensor,  # [n, k]
    bias: torch.Tensor | None = None,  # [n]
    launch: LinearLaunch | None = None,
    programmatic: bool = False,
    use_triton: bool = True,
    residual: torch.Tensor | None = None,  # [m, n]
) -> torch.Tensor:  # [m, n]
    """`F.linear(x, weight, bias)`, plus `residual` where given, through the Triton kernel where
    it applies (never without `use_triton`); with `programmatic` the kernel is launched with PDL
    where the device supports it."""
    launch = launch or _plan(x, weight, weight.shape[0], use_triton=use_triton, residual=residual)
    if launch is None:
        if residual is None:
            return F.linear(x, weight, bias)
        y = torch.addmm(residual, x, weight.t())  # cuBLAS adds the residual in its epilogue
        return y if bias is None else y.add_(bias)
    return _launch(x, weight, bias, launch, programmatic=programmatic, residual=residual)[0]


def linear_into_norm(
    x: torch.Tensor,  # [m, k]
    weight: torch.Tensor,  # [n, k]
    bias: torch.Tensor | None = None,  # [n]
    *,
    residual: torch.Tensor | None,  # [m, n]
    norm_weight: torch.Tensor,  # [n]
    eps: float,
    launch: LinearLaunch | None = None,
    programmatic: bool = False,
    use_triton: bool = True,
) -> NormedRows:
    """`linear(x, weight, bias, residual=residual)` as the rows of the RMSNorm (`norm_weight`,
    `eps`) after it; the Triton launch also writes what a fused reader of them needs. It takes
    PDL (`programmatic`) from NORM_WRITER_PDL_ROWS rows on."""
    launch = launch or _plan(x, weight, weight.shape[0], use_triton=use_triton, residual=residual)
    if launch is None:
        return NormedRows(linear(x, weight, bias, residual=residual, use_triton=False),
                          norm_weight, eps)  # fmt: skip
    programmatic = programmatic and x.shape[0] >= NORM_WRITER_PDL_ROWS
    y, scaled, squares = _launch(x, weight, bias, launch, programmatic=programmatic,
                                 residual=residual, next_norm_weight=norm_weight)  # fmt: skip
    return NormedRows(y, norm_weight, eps, scaled, squares)


def swiglu(
    x: torch.Tensor,  # [m, k]
    gate_up_weight: torch.Tensor,  # [2 * n, k]: gate rows, then up rows
    silu_and_mul: SiluAndMul,
    launch: LinearLaunch | None = None,
    programmatic: bool = False,
    use_triton: bool = True,
) -> torch.Tensor:  # [m, n]
    """`silu_and_mul(F.linear(x, gate_up_weight))`, as one Triton kernel where it applies
    (`programmatic`, `use_triton`: as in `linear`)."""
    n = _half(gate_up_weight)
    launch = launch or _plan(x, gate_up_weight, n, weight_tiles=2, use_triton=use_triton)
    if launch is None:
        return silu_and_mul(F.linear(x, gate_up_weight))
    return _launch(x, gate_up_weight, None, launch, programmatic=programmatic, swiglu=True)[0]


def norm_linear(
    x: NormedRows,
    weight: torch.Tensor,  # [n, k]
    bias: torch.Tensor | None = None,  # [n]
    *,
    rmsnorm: RMSNormFn,
    launch: LinearLaunch | None = None,
    programmatic: bool = False,
    use_triton: bool = True,
) -> torch.Tensor:  # [m, n]
    """`F.linear(rmsnorm(x.rows, x.weight, x.eps), weight, bias)`: one Triton launch without a
    norm kernel where it applies and `x` carries its scaled rows, the norm kernel then the
    layer otherwise (`programmatic`, `use_triton`: as in `linear`)."""
    launch = launch or _plan(x.rows, weight, weight.shape[0], use_triton=use_triton)
    if launch is None:
        return F.linear(x.normed(rmsnorm), weight, bias)
    return _launch_normed(x, weight, bias, launch, rmsnorm, programmatic=programmatic)


def norm_swiglu(
    x: NormedRows,
    gate_up_weight: torch.Tensor,  # [2 * n, k]: gate rows, then up rows
    *,
    rmsnorm: RMSNormFn,
    silu_and_mul: SiluAndMul,
    launch: LinearLaunch | None = None,
    programmatic: bool = False,
    use_triton: bool = True,
) -> torch.Tensor:  # [m, n]
    """`swiglu` of `rmsnorm(x.rows, x.weight, x.eps)`, as `norm_linear`."""
    n = _half(gate_up_weight)
    launch = launch or _plan(x.rows, gate_up_weight, n, weight_tiles=2, use_triton=use_triton)
    if launch is None:
        return silu_and_mul(F.linear(x.normed(rmsnorm), gate_up_weight))
    return _launch_normed(x, gate_up_weight, None, launch, rmsnorm, programmatic=programmatic,
                          swiglu=True)  # fmt: skip


def reference_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`RMSNormFn` in float32, rounded once to x's dtype (flashinfer's rounding)."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def reference_silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """`silu(gate) * up` in float32, rounded once to the input dtype (flashinfer's rounding)."""
    gate, up = gate_up.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(gate_up.dtype)


def _half(gate_up_weight: torch.Tensor) -> int:
    if gate_up_weight.shape[0] % 2:
        raise ValueError(
            f"gate_up_weight has {gate_up_weight.shape[0]} rows, expected an even number "
            "(gate rows, then as many up rows)"
        )
    return gate_up_weight.shape[0] // 2


def _plan(
    x: torch.Tensor,
    weight: torch.Tensor,
    n: int,
    weight_tiles: int = 1,
    use_triton: bool = True,
    residual: torch.Tensor | None = None,
) -> LinearLaunch | None:
    if not (
        use_triton
        and x.is_cuda
        and x.dim() == 2
        and x.dtype in _DTYPES
        and weight.dtype == x.dtype
        and weight.is_contiguous()
        and x.stride(-1) == 1
        and (residual is None or (residual.dtype == x.dtype and residual.stride(-1) == 1))
        and triton_available()
    ):
        return None
    return plan_linear(x.shape[0], n, weight.shape[1], weight_tiles)


def _launch_normed(
    x: NormedRows,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    launch: LinearLaunch,
    rmsnorm: RMSNormFn,
    *,
    programmatic: bool,
    swiglu: bool = False,
) -> torch.Tensor:
    """The launch on `x`'s scaled rows, or on the norm kernel's output where `x` has none."""
    if x.scaled is None or x.square_sums is None:
        normed = x.normed(rmsnorm)
        return _launch(normed, weight, bias, launch, programmatic=programmatic, swiglu=swiglu)[0]
    return _launch(x.scaled, weight, bias, launch, programmatic=programmatic, swiglu=swiglu,
                   normed=(x.square_sums, x.eps))[0]  # fmt: skip


def _launch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    launch: LinearLaunch,
    *,
    programmatic: bool,
    swiglu: bool = False,
    residual: torch.Tensor | None = None,
    normed: tuple[torch.Tensor, float] | None = None,  # x's rows' square sums, and eps
    next_norm_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """y, and with `next_norm_weight` y times it and y's square sums (one part a program)."""
    m, (n, k) = x.shape[0], weight.shape
    n = n // 2 if swiglu else n
    if x.shape[1] != k:
        raise ValueError(f"x has {x.shape[1]} features, the weight {k}")
    if not launch.fits(m, n, k):
        raise ValueError(f"{launch} does not fit a [{m}, {k}] x [{n}, {k}].T product")
    if residual is not None and residual.shape != (m, n):
        raise ValueError(f"residual has shape {tuple(residual.shape)}, expected ({m}, {n})")
    if next_norm_weight is not None and next_norm_weight.shape != (n,):
        raise ValueError(f"the next norm's weight has shape {tuple(next_norm_weight.shape)}, "
                         f"expected ({n},)")  # fmt: skip
    from parrotlet_kernels.triton_linear_kernels import small_batch_linear_kernel

    pdl = programmatic_launch.granted(programmatic, x.device)
    programs = n // launch.block_n
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    scaled = squares = None
    if next_norm_weight is not None:
        scaled = torch.empty_like(y)
        squares = torch.empty(m, programs, dtype=torch.float32, device=x.device)
    square_sums, eps = normed if normed is not None else (y, 0.0)  # y: a placeholder
    parts = square_sums.shape[1] if normed is not None else 1
    residual_arg = residual if residual is not None else y
    small_batch_linear_kernel[(programs,)](
        x, weight, bias if bias is not None else weight, y, residual_arg, square_sums,
        next_norm_weight if next_norm_weight is not None else y,
        scaled if scaled is not None else y, squares if squares is not None else y,
        eps, m, n, parts, x.stride(0), y.stride(0), residual_arg.stride(0),
        K=k, HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None, SWIGLU=swiglu,
        NORMED=normed is not None, NEXT_NORM=next_norm_weight is not None,
        BLOCK_M=launch.block_m, BLOCK_N=launch.block_n, BLOCK_K=launch.block_k,
        BLOCK_P=max(16, 1 << (parts - 1).bit_length()),
        NUM_STAGES=launch.num_stages, PDL=pdl, num_warps=launch.num_warps, launch_pdl=pdl,
    )  # fmt: skip
    return y, scaled, squares


@cache
def triton_available() -> bool:
    """Whether triton is installed (this module never imports it itself)."""
    return importlib.util.find_spec("triton") is not None
