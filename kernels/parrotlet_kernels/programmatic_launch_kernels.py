"""The Triton side of programmatic_launch.py: the prologue of every kernel launched with PDL.

Imported by the kernel modules on their first launch (this module imports triton). Older
Tritons lack the gdc instructions (3.6, the GPU machine's, and 3.9 have them); they are only
compiled where PDL is on, which `programmatic_launch.supported` allows only with such a Triton.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import cuda as triton_cuda


@triton.jit
def wait_for_inputs(PDL: tl.constexpr):
    """With PDL: let the next kernel launch now, then wait until the kernel before this one has
    completed and its writes are visible. Without PDL nothing (the stream already waited)."""
    if PDL:
        triton_cuda.gdc_launch_dependents()
        triton_cuda.gdc_wait()
