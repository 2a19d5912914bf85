"""Programmatic dependent launch (PDL) for the decode step's Triton kernels, on sm_90+ GPUs.

A decode step's CUDA graph is a chain of short kernels; without PDL each is launched only once
the one before has completed. A kernel launched with PDL (CUDA's programmatic stream
serialization, Hopper on) may start once every program of the kernel before it has called
`gdc_launch_dependents` (ours do so first thing), and waits for that kernel's completion and
memory with `gdc_wait`: its launch and setup overlap the previous kernel's tail. On the H100
(2026-12-06, benchmarks/engine_decode.py) that took Llama-3-8B's decode step from 1.176x to
1.160x the bandwidth floor at batch 1 and from 1.217x to 1.187x at batch 32. Prefetching the
linear layers' first weight columns into L2 before the wait was tried and lost (1.172x at 64 KiB
a program, 1.191x at 128 KiB).

What every kernel launched this way keeps: no load of anything an earlier kernel of the step
writes, and no store at all, before `gdc_wait()`. Kernels launched without it (cuBLAS,
flashinfer's, torch's) wait for the kernel before them to complete, as usual. The callers
(`triton_linear`, `triton_paged_decode`) take `programmatic=True` as a request; `granted`
says whether to launch with PDL.
"""

from __future__ import annotations

from functools import cache

import torch


@cache
def supported(device: torch.device) -> bool:
    """Whether the Triton kernels on `device` can be launched with PDL: a CUDA GPU of compute
    capability 9.0 or later (`griddepcontrol` is an sm_90 instruction) and a Triton that has the
    gdc instructions (programmatic_launch_kernels.py). Imports triton on a GPU of sm_90+."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (9, 0):
        return False
    from triton.language.extra import cuda as triton_cuda

    return hasattr(triton_cuda, "gdc_wait") and hasattr(triton_cuda, "gdc_launch_dependents")


def granted(requested: bool, device: torch.device) -> bool:
    """Whether a launch that `requested` PDL gets it on `device` (`supported`)."""
    return requested and supported(device)
