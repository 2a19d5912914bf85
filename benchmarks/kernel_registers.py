"""Offline register check: parrotlet's Triton kernels compiled for the H100 (sm_90a), no GPU.

Compiles each kernel at the launch configurations the engine uses (Llama-3-8B heads: 32 q / 8 KV,
head dim 128, page 16, bf16) and prints what ptxas reports: registers per thread, spill bytes,
shared memory, and whether it serialized the kernel's wgmma for want of registers. A kernel
that spills, or whose wgmma are serialized, is the first suspect when it runs far from its
floor. Triton generates different code from version to version: run this with the GPU
machine's Triton (3.6 on 2026-12-06; `pip install triton==3.6.0` into a scratch venv that also
sees this repo's kernels/ and torch). Writes benchmarks/results/kernel_registers.json.

    python benchmarks/kernel_registers.py
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia import compiler as nvidia
from triton.compiler import ASTSource

from parrotlet_kernels.triton_linear import plan_linear
from parrotlet_kernels.triton_linear_kernels import small_batch_linear_kernel
from parrotlet_kernels.triton_paged_decode_kernels import paged_decode_kernel, prefix_tiles_kernel
from parrotlet_kernels.triton_shared_prefix import CONSUMER_ORDERS
from parrotlet_kernels.triton_shared_prefix_kernels import prefix_kernel

TARGET = GPUTarget("cuda", 90, 32)
HEADS = dict(GROUP=4, HEAD_DIM=128, PAGE_SIZE=16)  # Llama-3-8B: 32 q / 8 KV heads
FLOAT_ARGS = ("scale_log2", "eps")  # the kernels' float32 runtime arguments


@dataclass(frozen=True)
class Config:
    """One launch configuration: the kernel, its constexprs, pointer dtypes and warps (Triton's
    default pipeline depth, as the engine launches them)."""

    name: str
    kernel: object
    constexprs: dict
    pointers: dict  # argument -> Triton pointer type; other runtime arguments are i32
    num_warps: int
    maxnreg: int | None = None  # ptxas's register cap (a warp-specialized kernel's budget)


@dataclass(frozen=True)
class Registers:
    name: str
    num_warps: int
    registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    shared_bytes: int
    wgmma_serialized: bool


ATTENTION_POINTERS = dict(
    q_ptr="*bf16", k_ptr="*bf16", v_ptr="*bf16", cache_ptr="*bf16", pos_ptr="*i32",
    cos_sin_ptr="*fp32", indptr_ptr="*i32", indices_ptr="*i32", last_ptr="*i32",
    key_rows_ptr="*i64", o_ptr="*fp32", lse_ptr="*fp32", tile_rows_ptr="*i32",
    tile_pages_ptr="*i32", prefix_pages_ptr="*i32", suffix_pages_ptr="*i32",
    suffix_lens_ptr="*i32", o_part_ptr="*fp32", lse_part_ptr="*fp32",
)  # fmt: skip
# Integer arguments that are multiples of 16 at the engine's launches (Llama-3-8B shapes): strides
# of 128-element heads, the linear layers' widths (4096, 6144, 14336) and row strides; not
# stride_table (pages a suffix row: 4 at a 64-token suffix). Of the pointers, the float tensors
# are whole torch allocations (256-byte aligned); the int page tables are sliced at any offset.
ALIGNED_INTS = {
    "stride_qb", "stride_qh", "stride_kb", "stride_kh", "stride_vb", "stride_vh", "stride_page",
    "stride_kv", "stride_slot", "stride_head", "N", "stride_xm", "stride_ym", "stride_rm",
}  # fmt: skip
LINEAR_POINTERS = dict(x_ptr="*bf16", w_ptr="*bf16", b_ptr="*bf16", y_ptr="*bf16",
                       residual_ptr="*bf16", squares_ptr="*fp32", next_w_ptr="*bf16",
                       scaled_ptr="*bf16", next_squares_ptr="*fp32")  # fmt: skip


def configs() -> list[Config]:
    paged = [paged_config(*c) for c in ((64, 16, 4), (64, 16, 8), (64, 1, 4), (16, 16, 4))]
    paged.append(paged_config(64, 16, 4, pipelined=True))
    tiles = [tiles_config(*c) for c in ((64, 4), (64, 8), (128, 8))]
    standalone = [shared_prefix_config(block_m, warps) for block_m, warps in ((64, 4), (128, 8))]
    orders = range(len(CONSUMER_ORDERS))
    ws = [ws_prefix_config(stages, schedule) for stages in (2, 3, 4) for schedule in orders]
    return paged + tiles + standalone + ws + linear_configs()


def paged_config(block_n: int, splits: int, warps: int, pipelined: bool = False) -> Config:
    """The engine's Triton decode attention (4 query heads a KV head padded to 16 rows)."""
    constexprs = dict(HEADS, BLOCK_G=16, BLOCK_N=block_n, NUM_SPLITS=splits, NUM_SLOTS=splits,
                      ROPE=True, PIPELINED=pipelined, PDL=True)  # fmt: skip
    name = f"paged_decode block_n {block_n}, {splits} splits" + (", pipelined" * pipelined)
    return Config(name, paged_decode_kernel, constexprs, ATTENTION_POINTERS, num_warps=warps)


def tiles_config(block_m: int, warps: int) -> Config:
    """The decode graphs' prefix tiles (8 prefix splits after 4 own-page slots)."""
    constexprs = dict(HEADS, ROWS=block_m // 4, BLOCK_M=block_m, BLOCK_N=64, NUM_SLOTS=12,
                      NUM_SPLITS=8, ROPE=True, PDL=True)  # fmt: skip
    name = f"prefix_tiles {block_m} rows"
    return Config(name, prefix_tiles_kernel, constexprs, ATTENTION_POINTERS, num_warps=warps)


def shared_prefix_config(block_m: int, warps: int) -> Config:
    """The standalone shared-prefix kernel's prefix programs (suffixes apart)."""
    constexprs = dict(HEADS, BLOCK_G=16, BLOCK_M=block_m, BLOCK_N=64, SUFFIX_BLOCK_N=64,
                      FUSE_SUFFIX=False)  # fmt: skip
    name = f"shared_prefix {block_m} rows"
    return Config(name, prefix_kernel, constexprs, ATTENTION_POINTERS, num_warps=warps)


def ws_prefix_config(stages: int, schedule: int) -> Config:
    """The standalone kernel's warp-specialized (Gluon) prefix programs: 128 rows, a loader and
    two consumer warpgroups, registers split 224 / 224 / 56 under a cap of 168 a thread;
    `schedule` indexes triton_shared_prefix.CONSUMER_ORDERS."""
    from parrotlet_kernels.gluon_shared_prefix_kernels import ws_prefix_kernel

    constexprs = dict(GROUP=4, HEAD_DIM=128, PAGE_SIZE=16, BLOCK_N=64, STAGES=stages,
                      SCHEDULE=schedule)  # fmt: skip
    name = f"shared_prefix ws, {stages} stages, {CONSUMER_ORDERS[schedule]}"
    return Config(name, ws_prefix_kernel, constexprs, ATTENTION_POINTERS, 4, maxnreg=168)


def linear_configs() -> list[Config]:
    """Llama-3-8B's decode-step layers at one row, as the engine launches them (qkv and gate_up
    reading normed rows, down adding the residual and writing the next norm's input)."""
    out = []
    for name, n, k, tiles in (("qkv", 6144, 4096, 1), ("gate_up", 14336, 4096, 2),
                              ("down", 4096, 14336, 1)):  # fmt: skip
        launch = plan_linear(1, n, k, weight_tiles=tiles)
        down = name == "down"
        constexprs = dict(K=k, HAS_BIAS=False, HAS_RESIDUAL=down, SWIGLU=tiles == 2,
                          NORMED=not down, NEXT_NORM=down, BLOCK_M=launch.block_m,
                          BLOCK_N=launch.block_n, BLOCK_K=launch.block_k, BLOCK_P=64,
                          NUM_STAGES=launch.num_stages, PDL=True)  # fmt: skip
        out.append(Config(f"linear {name}", small_batch_linear_kernel, constexprs,
                          LINEAR_POINTERS, num_warps=launch.num_warps))  # fmt: skip
    return out


def compile_ptx(config: Config) -> tuple[str, int]:
    """The kernel's PTX for sm_90a at this configuration, and its shared memory in bytes.

    Arguments get the 16-byte divisibility that Triton's launcher finds at run time (a pointer
    whose address, an integer whose value, is a multiple of 16): without it every KV load is
    scalar and the kernels appear to spill (2026-12-06's offline table, corrected 2026-12-07).
    """
    fn = config.kernel
    signature, constexprs, attrs = {}, {}, {}
    for i, arg in enumerate(fn.arg_names):
        if arg in config.constexprs:
            signature[arg], constexprs[(i,)] = "constexpr", config.constexprs[arg]
            continue
        signature[arg] = config.pointers.get(arg, "fp32" if arg in FLOAT_ARGS else "i32")
        if arg in ALIGNED_INTS or signature[arg] in ("*bf16", "*fp32"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    options = dict(num_warps=config.num_warps, maxnreg=config.maxnreg)
    source_class = ASTSource
    if getattr(fn, "is_gluon", lambda: False)():
        from triton.experimental.gluon._runtime import GluonASTSource as source_class
    source = source_class(fn, signature, constexprs, attrs)
    compiled = triton.compile(source, target=TARGET, options=options)
    return compiled.asm["ptx"], compiled.metadata.shared


def ptxas_report(config: Config, ptx: str, shared: int) -> Registers:
    """Assemble `ptx` with Triton's ptxas -v and read its resource lines."""
    ptxas = nvidia.get_ptxas(TARGET.arch).path
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        cmd = [ptxas, "-v", "--gpu-name", "sm_90a", str(src), "-o", str(Path(tmp) / "k.cubin")]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    info = done.stdout + done.stderr
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", info)
    return Registers(
        name=config.name,
        num_warps=config.num_warps,
        registers=int(re.search(r"Used (\d+) registers", info).group(1)),
        spill_store_bytes=int(spills.group(1)),
        spill_load_bytes=int(spills.group(2)),
        shared_bytes=shared,
        wgmma_serialized="insufficient register resources" in info,
    )


def main() -> None:
    rows = [ptxas_report(c, *compile_ptx(c)) for c in configs()]
    print(f"Triton {triton.__version__}, sm_90a")
    print(f"{'kernel':<46} {'warps':>5} {'regs':>5} {'spill st/ld B':>14} {'smem':>7}  wgmma")
    for r in rows:
        spill = f"{r.spill_store_bytes}/{r.spill_load_bytes}"
        serial = "serialized" if r.wgmma_serialized else "-"
        print(f"{r.name:<46} {r.num_warps:>5} {r.registers:>5} {spill:>14} {r.shared_bytes:>7}  "
              f"{serial}")  # fmt: skip
    out = Path(__file__).parent / "results" / "kernel_registers.json"
    report = dict(triton=triton.__version__, target="sm_90a", rows=[asdict(r) for r in rows])
    out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
