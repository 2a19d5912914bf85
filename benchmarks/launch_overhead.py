"""Host time per call of the decode step's launches outside a CUDA graph (eager steps).

An eager engine step (prefill or mixed, or any step without a captured graph) is host-bound
when its launches cost the host more than their kernels cost the device. This times each launch
the fused Llama forward makes, on a weight so small that the device never falls behind: the
host microseconds per call are the launch's own cost.

    python benchmarks/launch_overhead.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import flashinfer
import torch
import torch.nn.functional as F

from parrotlet_kernels import triton_linear


def host_us(fn: Callable[[], object], calls: int) -> float:
    """Host microseconds per call of `fn` (the device keeps up: the queue never fills)."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = time.perf_counter() - start
    torch.cuda.synchronize()
    return host / calls * 1e6


def launches(rows: int, pdl: bool) -> dict[str, Callable[[], object]]:
    dev, dt, k = "cuda", torch.bfloat16, 4096
    x = torch.randn(rows, k, device=dev, dtype=dt)
    w = torch.randn(64, k, device=dev, dtype=dt)  # one program: the device time is tiny
    w2 = torch.randn(128, k, device=dev, dtype=dt)
    res = torch.randn(rows, 64, device=dev, dtype=dt)
    nw = torch.ones(64, device=dev, dtype=dt)
    kw = torch.ones(k, device=dev, dtype=dt)
    normed = triton_linear.NormedRows(
        x, kw, 1e-5, x.clone(), torch.ones(rows, 1, device=dev, dtype=torch.float32)
    )
    opts = dict(programmatic=pdl)
    return {
        "F.linear (cuBLAS)": lambda: F.linear(x, w),
        "torch.addmm (cuBLAS + residual)": lambda: torch.addmm(res, x, w.t()),
        "flashinfer.rmsnorm": lambda: flashinfer.rmsnorm(x, kw, 1e-5),
        "flashinfer.silu_and_mul": lambda: flashinfer.silu_and_mul(x),
        "torch.empty": lambda: torch.empty(rows, 64, device=dev, dtype=dt),
        "triton linear": lambda: triton_linear.linear(x, w, **opts),
        "triton linear + residual": lambda: triton_linear.linear(x, w, residual=res, **opts),
        "triton linear_into_norm": lambda: triton_linear.linear_into_norm(
            x, w, residual=res, norm_weight=nw, eps=1e-5, **opts
        ),
        "triton norm_linear": lambda: triton_linear.norm_linear(
            normed, w, rmsnorm=flashinfer.rmsnorm, **opts
        ),
        "triton norm_swiglu": lambda: triton_linear.norm_swiglu(
            normed, w2, rmsnorm=flashinfer.rmsnorm, silu_and_mul=flashinfer.silu_and_mul, **opts
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    print(f"host us per call on {torch.cuda.get_device_name()}")
    for rows in (1,):
        for pdl in (False, True):
            for name, fn in launches(rows, pdl).items():
                if pdl and not name.startswith("triton"):
                    continue
                print(f"  {rows:>2} rows, PDL {pdl!s:5}  {name:34} {host_us(fn, args.calls):7.1f}")


if __name__ == "__main__":
    main()
