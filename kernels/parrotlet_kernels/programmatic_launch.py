"""Programmatic dependent launch (PDL) for the decode step's Triton kernels, on sm_90+ GPUs.

A decode step's CUDA graph is a chain of short kernels. Between two of them the GPU drains the
first (its last programs run alone), then launches the second and waits for its first loads.
A kernel launched with PDL (CUDA's programmatic stream serialization, Hopper on) may start once
every program of the kernel before it has called `gdc_launch_dependents`, and waits for that
kernel's completion and memory with `gdc_wait` only where it needs them. So work that reads
nothing an earlier kernel writes (a linear layer's weights, prefetched into L2) runs during the
previous kernel's tail.

What every kernel launched this way keeps: no load of anything an earlier kernel of the step
writes, and no store at all, before `gdc_wait()`. Kernels launched without it (cuBLAS,
flashinfer's, torch's) wait for the kernel before them to complete, as usual. The callers
(`triton_linear`, `triton_paged_decode`) take `programmatic=True` as a request and launch
with PDL where `supported(device)`.
"""

from __future__ import annotations

from functools import cache

import torch


@cache
def supported(device: torch.device) -> bool:
    """Whether `device` runs programmatic dependent launches: a CUDA GPU of compute capability
    9.0 or later (`griddepcontrol` is an sm_90 instruction)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)
