"""The small-batch linear kernel: launch planning and fallbacks on CPU, its output against torch
under Triton's interpreter (float16; skipped without triton) and on the GPU (`-m gpu`).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from parrotlet_kernels import programmatic_launch
from parrotlet_kernels.triton_linear import (
    MAX_ROWS,
    LinearLaunch,
    NormedRows,
    linear,
    linear_into_norm,
    norm_linear,
    norm_swiglu,
    plan_linear,
    reference_rmsnorm,
    reference_silu_and_mul,
    swiglu,
)

from .attention_helpers import requires_triton, run_under_triton_interpreter

KERNELS = "parrotlet_kernels.triton_linear_kernels"
LLAMA3_8B = {"qkv": (6144, 4096), "o_proj": (4096, 4096), "gate_up": (28672, 4096),
             "down": (4096, 14336), "lm_head": (128256, 4096)}  # fmt: skip


# ---- CPU: planning, validation, fallbacks ----------------------------------------------------
def test_plan_streams_64_rows_per_program_where_they_divide():
    planned = {name: plan_linear(1, n, k) for name, (n, k) in LLAMA3_8B.items()}
    assert set(planned.values()) == {LinearLaunch(16, 64, 128, num_stages=5)}
    assert plan_linear(16, 96, 192) == LinearLaunch(16, 32, 64, num_stages=5)
    assert plan_linear(3, 80, 128) == LinearLaunch(16, 16, 128, num_stages=5)


def test_plan_fits_the_stages_in_shared_memory():
    # 2 bytes * 64 * (4 * 64 + 16) = 34 KB a stage: 5 would need 170 KB of the 200 KB budget
    assert plan_linear(16, 4096, 64 * 3, weight_tiles=4) == LinearLaunch(16, 64, 64, num_stages=5)
    # 2 bytes * 128 * (8 * 64 + 16) = 132 KB a stage: one fits
    assert plan_linear(1, 4096, 4096, weight_tiles=8) == LinearLaunch(16, 64, 128, num_stages=1)


def test_plan_pads_more_rows_to_wider_tiles():
    assert plan_linear(17, 4096, 4096) == LinearLaunch(32, 64, 128, num_stages=5)
    assert plan_linear(40, 4096, 4096) == LinearLaunch(64, 64, 128, num_stages=5)
    # SwiGLU at 64 rows: 2 * 128 * (2 * 64 + 64) bytes a stage, 4 fit in 200 KB
    assert plan_linear(64, 14336, 4096, 2) == LinearLaunch(64, 64, 128, num_stages=4)


def test_plan_declines_what_cublas_should_run():
    assert MAX_ROWS == 64
    assert plan_linear(65, 4096, 4096) is None  # more rows than MAX_ROWS (64-row tiles at most)
    assert plan_linear(0, 4096, 4096) is None
    assert plan_linear(1, 4104, 4096) is None  # no block of 16 divides the features
    assert plan_linear(1, 4096, 4104) is None  # nor of 64 the inputs


def test_launch_validation_and_fit():
    with pytest.raises(ValueError, match="block_n must be a power of two >= 16, got 24"):
        LinearLaunch(16, 24, 64)
    with pytest.raises(ValueError, match="num_stages must be >= 1, got 0"):
        LinearLaunch(16, 16, 64, num_stages=0)
    launch = LinearLaunch(16, 32, 128)
    assert launch.fits(16, 64, 256)
    assert not launch.fits(17, 64, 256)
    assert not launch.fits(1, 48, 256)
    assert not launch.fits(1, 64, 192)


def test_programmatic_launch_needs_a_gpu_of_sm_90_or_later():
    assert not programmatic_launch.supported(torch.device("cpu"))


def test_cpu_tensors_fall_back_to_torch_without_loading_triton():
    sys.modules.pop(KERNELS, None)
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=gen) for s in ((3, 64), (32, 64), (32,)))
    assert torch.equal(linear(x, w, b), F.linear(x, w, b))
    expected = reference_silu_and_mul(F.linear(x, w))
    assert torch.equal(swiglu(x, w, reference_silu_and_mul), expected)
    assert KERNELS not in sys.modules


def test_norm_and_residual_on_cpu_run_the_given_norm_then_torch():
    gen = torch.Generator().manual_seed(0)
    x, residual, w = (torch.randn(*s, generator=gen) for s in ((3, 64), (3, 32), (64, 64)))
    g = torch.rand(64, generator=gen) + 0.5
    normed = reference_rmsnorm(x, g, 1e-5)
    rows = NormedRows(x, g, 1e-5)
    assert torch.equal(norm_linear(rows, w, rmsnorm=reference_rmsnorm), F.linear(normed, w))
    y = norm_swiglu(rows, w, rmsnorm=reference_rmsnorm, silu_and_mul=reference_silu_and_mul)
    assert torch.equal(y, reference_silu_and_mul(F.linear(normed, w)))
    summed = F.linear(x, w[:32]) + residual
    torch.testing.assert_close(linear(x, w[:32], residual=residual), summed, atol=1e-5, rtol=0)
    into = linear_into_norm(x, w[:32], residual=residual, norm_weight=g[:32], eps=1e-6)
    torch.testing.assert_close(into.rows, summed, atol=1e-5, rtol=0)
    bias = torch.randn(32, generator=gen)
    torch.testing.assert_close(linear(x, w[:32], bias, residual=residual), summed + bias,
                               atol=1e-5, rtol=0)  # fmt: skip
    assert torch.equal(into.weight, g[:32]) and into.eps == 1e-6
    assert into.scaled is None and into.square_sums is None  # no fused launch wrote them


def test_reference_rmsnorm_rounds_once():
    x = torch.tensor([[3.0, -4.0]], dtype=torch.bfloat16)
    normed = reference_rmsnorm(x, torch.tensor([1.0, 0.5]), eps=0.0)
    expected = torch.tensor([[3.0, -2.0]]) / 12.5**0.5  # rms sqrt(12.5); the second one halved
    assert torch.equal(normed, expected.bfloat16())


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"residual has shape \(1, 16\), expected \(1, 32\)"):
        linear(torch.zeros(1, 64), torch.zeros(32, 64), launch=LinearLaunch(16, 32, 64),
               residual=torch.zeros(1, 16))  # fmt: skip
    with pytest.raises(ValueError, match=r"the norm's weight has shape \(32,\), expected \(64,\)"):
        NormedRows(torch.zeros(1, 64), torch.zeros(32), 1e-5)
    with pytest.raises(ValueError, match=r"scaled has shape \(2, 64\), expected \(1, 64\)"):
        NormedRows(torch.zeros(1, 64), torch.zeros(64), 1e-5, scaled=torch.zeros(2, 64))
    with pytest.raises(ValueError, match=r"the next norm's weight has shape \(64,\), expected"):
        linear_into_norm(torch.zeros(1, 64), torch.zeros(32, 64), residual=None,
                         norm_weight=torch.zeros(64), eps=1e-5,
                         launch=LinearLaunch(16, 32, 64))  # fmt: skip


def test_swiglu_needs_gate_and_up_rows():
    with pytest.raises(ValueError, match="gate_up_weight has 7 rows, expected an even number"):
        swiglu(torch.zeros(1, 64), torch.zeros(7, 64), reference_silu_and_mul)


def test_a_launch_that_does_not_fit_is_refused():
    with pytest.raises(ValueError, match=r"does not fit a \[1, 96\] x \[32, 96\].T product"):
        linear(torch.zeros(1, 96), torch.zeros(32, 96), launch=LinearLaunch(16, 32, 64))
    with pytest.raises(ValueError, match="x has 64 features, the weight 96"):
        linear(torch.zeros(1, 64), torch.zeros(32, 96), launch=LinearLaunch(16, 32, 32))


def test_reference_silu_and_mul_rounds_once():
    gate_up = torch.tensor([[1.0, -2.0, 3.0, 0.5]], dtype=torch.bfloat16)
    expected = (F.silu(torch.tensor([1.0, -2.0])) * torch.tensor([3.0, 0.5])).bfloat16()
    assert torch.equal(reference_silu_and_mul(gate_up), expected[None])


def test_import_does_not_load_triton():
    code = f"import sys, parrotlet_kernels.triton_linear; print({KERNELS!r} in sys.modules)"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "False\n"), done.stderr


# ---- the kernel itself: one check routine, run by the interpreter (CPU) or on the GPU ----------
CASES = [  # (rows, out features, in features, bias, SwiGLU, launch)
    (1, 96, 192, True, False, LinearLaunch(16, 32, 64, num_stages=2)),
    (5, 64, 256, False, True, LinearLaunch(16, 16, 128)),
    (16, 128, 128, False, False, LinearLaunch(16, 64, 64)),
    (2, 64, 128, False, True, LinearLaunch(16, 64, 128, num_stages=5)),
    (40, 64, 256, True, False, LinearLaunch(64, 64, 64, num_stages=4)),
    (33, 32, 128, False, True, LinearLaunch(64, 32, 128, num_stages=4)),
]


def check_kernel(device: str, dtype: torch.dtype) -> None:
    """The kernel against float32 torch on the same 16-bit inputs (one rounding of the output)."""
    gen = torch.Generator().manual_seed(0)
    for rows, n, k, bias, fused, launch in CASES:
        w = (torch.randn(2 * n if fused else n, k, generator=gen) * 0.05).to(dtype).to(device)
        b = torch.randn(n, generator=gen).to(dtype).to(device) if bias else None
        x = torch.randn(rows, k, generator=gen).to(dtype).to(device)
        if fused:
            ours = swiglu(x, w, reference_silu_and_mul, launch=launch)
            gate, up = F.linear(x.float(), w.float()).chunk(2, dim=-1)
            exact = F.silu(gate) * up
        else:
            ours = linear(x, w, b, launch=launch)
            exact = F.linear(x.float(), w.float(), None if b is None else b.float())
        assert ours.shape == (rows, n) and ours.dtype == dtype
        torch.testing.assert_close(ours.float(), exact, atol=2e-2, rtol=1e-2)


FUSED_CASES = [  # (rows, out features, in features, reader, bias, launch)
    (1, 96, 192, "norm_linear", True, LinearLaunch(16, 32, 64, num_stages=2)),
    (5, 64, 256, "norm_swiglu", False, LinearLaunch(16, 16, 128)),
    (33, 32, 128, "norm_linear", False, LinearLaunch(64, 32, 128, num_stages=3)),
    (40, 32, 128, "norm_swiglu", False, LinearLaunch(64, 32, 128, num_stages=3)),
]


def check_fused_kernel(device: str, dtype: torch.dtype) -> None:
    """Two launches with an RMSNorm between them: the first (with the residual add and bias)
    writes the rows, their product with the norm weight and their sums of squares; the second
    reads them. Against float32 torch of the unrounded norm of the rows the first wrote."""
    gen = torch.Generator().manual_seed(1)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(device)

    for rows, n, k, reader, bias, launch in FUSED_CASES:
        w_in, x, residual = rand(k, 64, scale=0.1), rand(rows, 64), rand(rows, k, scale=3.0)
        b, g = (rand(k) if bias else None), rand(k) + 1.0
        inputs = [t.clone() for t in (x, residual, g)]
        first = LinearLaunch(launch.block_m, 32, 64)  # k / 32 programs: square sums in parts
        into = linear_into_norm(x, w_in, b, residual=residual, norm_weight=g, eps=1e-5,
                                launch=first)  # fmt: skip
        h32 = F.linear(x.float(), w_in.float(), None if b is None else b.float())
        torch.testing.assert_close(into.rows.float(), h32 + residual.float(), atol=3e-2, rtol=2e-2)
        rows32 = into.rows.float()  # the second launch's input: the rows as the first stored them
        assert torch.equal(into.scaled, (rows32 * g.float()).to(dtype))
        assert into.square_sums.shape == (rows, k // 32)
        torch.testing.assert_close(
            into.square_sums.sum(-1), rows32.pow(2).sum(-1), rtol=1e-5, atol=0
        )
        assert all(map(torch.equal, inputs, (x, residual, g)))

        normed = rows32 * torch.rsqrt(rows32.pow(2).mean(-1, keepdim=True) + 1e-5) * g.float()
        w = rand(2 * n if reader == "norm_swiglu" else n, k, scale=0.05)
        if reader == "norm_swiglu":
            ours = norm_swiglu(into, w, rmsnorm=None, silu_and_mul=None, launch=launch)
            gate, up = F.linear(normed, w.float()).chunk(2, dim=-1)
            exact = F.silu(gate) * up
        else:
            ours = norm_linear(into, w, rmsnorm=None, launch=launch)
            exact = F.linear(normed, w.float())
        assert ours.shape == (rows, n) and ours.dtype == dtype
        torch.testing.assert_close(ours.float(), exact, atol=3e-2, rtol=2e-2)


@requires_triton
def test_kernel_under_the_triton_interpreter():
    """float16 only: the interpreter mishandles bfloat16 loads (seen with triton 3.6)."""
    code = "from tests.kernels.test_triton_linear import check_kernel, check_fused_kernel; "
    code += "import torch; check_kernel('cpu', torch.float16); "
    code += "check_fused_kernel('cpu', torch.float16)"
    run_under_triton_interpreter(code)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_on_gpu(dtype: torch.dtype) -> None:
    check_kernel("cuda", dtype)
    check_fused_kernel("cuda", dtype)


@pytest.mark.gpu
def test_use_triton_false_runs_cublas():
    gen = torch.Generator(device="cuda").manual_seed(0)
    x, w = (torch.randn(*s, device="cuda", generator=gen).bfloat16() for s in ((2, 256), (64, 256)))
    assert torch.equal(linear(x, w, use_triton=False), F.linear(x, w))


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 3, 8, 16, 32, 64])
def test_planned_llama3_8b_shapes_match_cublas(rows: int) -> None:
    """Each planned launch for Llama-3-8B's projections (gate_up with SwiGLU) against cuBLAS."""
    gen = torch.Generator(device="cuda").manual_seed(rows)
    for name, (n, k) in LLAMA3_8B.items():
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.02
        x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16, generator=gen)
        if name == "gate_up":
            launch = plan_linear(rows, n // 2, k, 2)
            ours = swiglu(x, w, reference_silu_and_mul, launch=launch)
            theirs = reference_silu_and_mul(F.linear(x, w))
        else:
            ours = linear(x, w, launch=plan_linear(rows, n, k))
            theirs = F.linear(x, w)
        torch.testing.assert_close(ours.float(), theirs.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 4])  # at 1 row linear_into_norm launches without PDL
def test_programmatic_launches_in_a_cuda_graph_read_each_others_outputs(rows: int):
    """A chain of PDL launches, each reading the output of the one before (and the first a copy
    into its input), captured once and replayed on new inputs: each replay equals the chain
    launched one by one without PDL, exactly (the same kernel math)."""
    gen = torch.Generator(device="cuda").manual_seed(0)

    def weight(n: int, k: int) -> torch.Tensor:
        return torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.02

    weights = [weight(4096, 4096), weight(2 * 8192, 4096), weight(4096, 8192), weight(6144, 4096)]
    norm_weight = weight(1, 4096)[0] + 1
    x = torch.zeros(rows, 4096, device="cuda", dtype=torch.bfloat16)

    def chain(programmatic: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """A decoder layer's pattern: x -> linear (+ x, into a norm) -> (norm) SwiGLU ->
        linear (+ the first output, written two launches before, into a norm) -> (norm)
        linear."""
        options = dict(norm_weight=norm_weight, eps=1e-5, programmatic=programmatic)
        mid = linear_into_norm(x, weights[0], residual=x, **options)
        hidden = norm_swiglu(mid, weights[1], rmsnorm=None, silu_and_mul=None,
                             programmatic=programmatic)  # fmt: skip
        out = linear_into_norm(hidden, weights[2], residual=mid.rows, **options)
        return norm_linear(out, weights[3], rmsnorm=None, programmatic=programmatic), out.rows

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        chain(True)  # compiles the PDL kernels outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = chain(True)
    for seed in range(3):
        x.copy_(torch.randn(rows, 4096, device="cuda", generator=gen).bfloat16())
        graph.replay()
        expected = chain(False)
        assert all(map(torch.equal, out, expected)), f"replay {seed}"
