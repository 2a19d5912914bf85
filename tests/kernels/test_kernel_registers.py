"""benchmarks/kernel_registers.py on CPU: a kernel compiled for sm_90a and ptxas's report read."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from .attention_helpers import requires_triton

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "kernel_registers.py"


def load_script():
    spec = importlib.util.spec_from_file_location("kernel_registers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@requires_triton
def test_the_qkv_linear_kernel_fits_its_registers_without_spilling():
    script = load_script()
    qkv = next(c for c in script.linear_configs() if c.name == "linear qkv")
    report = script.ptxas_report(qkv, *script.compile_ptx(qkv))
    assert (report.name, report.num_warps) == ("linear qkv", 4)
    assert 32 <= report.registers <= 128  # 48 with Triton 3.6 (reading normed rows)
    assert (report.spill_store_bytes, report.spill_load_bytes) == (0, 0)
    # 5 stages of the 16 x 128 input slice and the 64 x 128 weight tile: with the run-time
    # alignment of its pointers and widths, the weight stream is pipelined through shared memory
    assert report.shared_bytes == 5 * (16 + 64) * 128 * 2
