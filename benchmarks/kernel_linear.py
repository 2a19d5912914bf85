"""Decode-step linear layers on one GPU: parrotlet's Triton kernel vs cuBLAS vs the bytes floor.

For each Llama-3-8B projection (qkv, o, gate_up with SwiGLU's product, down, lm_head) and a few
rows (decode batch sizes 1-64, up to `triton_linear.MAX_ROWS`), times
`F.linear` (gate_up: then flashinfer's silu_and_mul), the Triton kernel with `plan_linear`'s
launch, the same launched with programmatic dependent launch ("pdl": each call may start during
the previous one's tail), for qkv and gate_up flashinfer's rmsnorm then the PDL launch
("apart") against the launch reading the scaled rows of the launch before (`norm_linear` /
`norm_swiglu`: "fused", PDL), for o_proj and down the PDL launch adding the residual and writing
the next norm's scaled rows and sums of squares (`linear_into_norm`: "fused", next to "pdl"),
and with --sweep a sweep of launches, each as a CUDA graph of calls
cycling over weight copies larger than L2 together (each call streams its weight from HBM).
The floor is the weight bytes over the copy bandwidth measured in the same run. Checks each
Triton result against F.linear. Prints a line per layer and size, then a summary line; writes
benchmarks/results/kernel_linear.json (and $OUT/kernel_linear.json when $OUT is set).

    python benchmarks/kernel_linear.py [--rows 1 2 4 8 16 32 64] [--sweep]
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from engine_decode import copy_bandwidth, write_report

from parrotlet_kernels import triton_linear
from parrotlet_kernels.triton_linear import LinearLaunch, NormedRows

SHAPES = {  # name: (out features, in features), Llama-3-8B
    "qkv": (6144, 4096),
    "o_proj": (4096, 4096),
    "gate_up": (28672, 4096),
    "down": (4096, 14336),
    "lm_head": (128256, 4096),
}
SWEEP = [
    LinearLaunch(16, block_n, block_k, num_warps, num_stages)
    for block_n, block_k, num_warps, num_stages in itertools.product(
        (32, 64, 128), (64, 128, 256), (4, 8), (4, 6)
    )
]
NORMED = ("qkv", "gate_up")  # the layers an RMSNorm comes before
WITH_RESIDUAL = ("o_proj", "down")  # the layers whose output joins the residual stream
L2_MULTIPLE_BYTES = 256 << 20  # weight copies per graph: at least this many bytes in all


def time_us(call: Callable[[int], torch.Tensor], copies: int, reps: int = 3) -> float:
    """Microseconds per call, from CUDA-graph replays of call(0) ... call(copies - 1)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(copies):
            call(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(copies):
            call(i)
    graph.replay()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3 / copies)
    return best


def measure(name: str, rows: int, sweep: bool, bandwidth: float, silu_and_mul) -> dict:
    n, k = SHAPES[name]
    weight_bytes = n * k * 2
    copies = max(2, -(-L2_MULTIPLE_BYTES // weight_bytes))
    weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
    swiglu = name == "gate_up"

    def cublas(i: int) -> torch.Tensor:
        y = F.linear(x, weights[i])
        return silu_and_mul(y) if swiglu else y

    def ours(i: int, launch: LinearLaunch | None = None, pdl: bool = False) -> torch.Tensor:
        if swiglu:
            return triton_linear.swiglu(
                x, weights[i], silu_and_mul, launch=launch, programmatic=pdl
            )
        return triton_linear.linear(x, weights[i], launch=launch, programmatic=pdl)

    out, tiles = (n // 2, 2) if swiglu else (n, 1)
    planned = triton_linear.plan_linear(rows, out, k, tiles)
    error = (ours(0, planned).float() - cublas(0).float()).abs().max().item()
    row = {
        "layer": name, "rows": rows, "floor_us": weight_bytes / bandwidth * 1e6,
        "cublas_us": time_us(cublas, copies), "planned": str(planned),
        "planned_us": time_us(lambda i: ours(i, planned), copies) if planned else None,
        "max_abs_err": error,
    }  # fmt: skip
    if planned:
        pdl_error = (ours(0, planned, pdl=True).float() - cublas(0).float()).abs().max().item()
        row |= {
            "pdl_us": time_us(lambda i: ours(i, planned, pdl=True), copies),
            "pdl_max_abs_err": pdl_error,
        }
    if planned and name in NORMED + WITH_RESIDUAL:
        row |= _time_fused(x, weights, name, planned, silu_and_mul, copies)
    if sweep:
        timings = [(_sweep_time(ours, c, copies), c) for c in SWEEP if c.fits(rows, out, k)]
        best_us, best = min(timings, key=lambda t: t[0])
        row |= {"best_us": best_us, "best": str(best)}
    return row


def _time_fused(x, weights, name: str, launch: LinearLaunch, silu_and_mul, copies: int) -> dict:
    """us a call of the layer with the norm or residual add around it fused in (PDL), for a norm
    layer also with flashinfer's rmsnorm before it ("apart"); the fused output's largest
    difference from the unfused one."""
    import flashinfer

    rows, k = x.shape
    n = weights[0].shape[0]
    residual = torch.randn(rows, n, device="cuda", dtype=x.dtype)
    norm_weight = torch.rand(k, device="cuda", dtype=x.dtype) + 0.5
    next_weight = torch.rand(n, device="cuda", dtype=x.dtype) + 0.5
    x32 = x.float()  # as the launch before would have written them, in 64 parts
    normed_rows = NormedRows(x, norm_weight, 1e-5, (x32 * norm_weight).to(x.dtype),
                             x32.pow(2).view(rows, 64, -1).sum(-1))  # fmt: skip
    options = dict(launch=launch, programmatic=True)

    def apart(i: int) -> torch.Tensor:
        if name in WITH_RESIDUAL:
            return triton_linear.linear(x, weights[i], **options) + residual
        normed = flashinfer.rmsnorm(x, norm_weight, 1e-5)
        if name == "gate_up":
            return triton_linear.swiglu(normed, weights[i], silu_and_mul, **options)
        return triton_linear.linear(normed, weights[i], **options)

    def fused(i: int) -> torch.Tensor:
        if name in WITH_RESIDUAL:
            return triton_linear.linear_into_norm(
                x, weights[i], residual=residual, norm_weight=next_weight, eps=1e-5, **options
            ).rows
        if name == "gate_up":
            return triton_linear.norm_swiglu(
                normed_rows, weights[i], rmsnorm=None, silu_and_mul=None, **options
            )
        return triton_linear.norm_linear(normed_rows, weights[i], rmsnorm=None, **options)

    row = {"fused_us": time_us(fused, copies)}
    if name in NORMED:
        row["apart_us"] = time_us(apart, copies)
    return row | {"fused_max_abs_diff": (fused(0) - apart(0)).float().abs().max().item()}


def format_row(r: dict) -> str:
    best = f"  best {r['best_us']:.1f} {r['best']}" if "best_us" in r else ""
    nan = float("nan")
    return (
        f"{r['layer']:8s} rows {r['rows']:2d}: floor {r['floor_us']:7.1f} us"
        f"  cublas {r['cublas_us']:7.1f}  triton {r['planned_us'] or nan:7.1f}"
        f"  pdl {r.get('pdl_us', nan):7.1f}  apart {r.get('apart_us', nan):7.1f}"
        f"  fused {r.get('fused_us', nan):7.1f}"
        f"  err {r['max_abs_err']:.3g} / {r.get('pdl_max_abs_err', nan):.3g}{best}"
    )


def _sweep_time(ours: Callable, launch: LinearLaunch, copies: int) -> float:
    try:
        return time_us(lambda i: ours(i, launch), copies)
    except Exception as exc:  # a launch that needs more shared memory than the SM has
        print(f"  {launch}: {type(exc).__name__}", flush=True)
        return float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--layers", nargs="+", default=list(SHAPES))
    parser.add_argument("--sweep", action="store_true", help="also time the launch sweep")
    args = parser.parse_args()
    import flashinfer

    bandwidth = copy_bandwidth(torch.device("cuda"))
    rows = []
    for name in args.layers:
        for m in args.rows:
            r = measure(name, m, args.sweep, bandwidth, flashinfer.silu_and_mul)
            torch.cuda.empty_cache()
            rows.append(r)
            print(format_row(r), flush=True)
    total = {
        key: sum(r.get(key) or 0.0 for r in rows if r["rows"] == 1)
        for key in ("floor_us", "cublas_us", "planned_us", "pdl_us")
    }
    engine_us = sum(r.get("fused_us") or r.get("pdl_us") or 0.0 for r in rows if r["rows"] == 1)
    print(
        f"kernel_linear on {torch.cuda.get_device_name()}: one row through all layers "
        f"{total['planned_us']:.0f} us Triton ({total['pdl_us']:.0f} with PDL, {engine_us:.0f}"
        f" with the norms and residual adds fused in) vs {total['cublas_us']:.0f} us cuBLAS"
        f" (floor {total['floor_us']:.0f} us)"
    )
    write_report(
        {"device": torch.cuda.get_device_name(), "copy_bandwidth_gb_s": bandwidth / 1e9,
         "rows": rows}, "kernel_linear",
    )  # fmt: skip


if __name__ == "__main__":
    main()
