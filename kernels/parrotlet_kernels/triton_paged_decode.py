"""Paged decode attention with the step's K/V append in the same Triton launch.

A decode step's attention on flashinfer is four launches a layer at small batch: two cache writes,
the paged kernel, and a merge of its KV splits; at batch 1 and short contexts they are bound by
launch latency, not bytes (about 14 us a layer on the H100 for 0.7 MB of KV). `paged_decode`
writes k/v and attends in one launch, plus a merge only where it splits the KV. Its inputs are
the page-table buffers GraphDecodeAttention fills (lengths are read on the device), so one CUDA
graph serves every length. With `prefix` tiles (triton_prefix_tiles.py) the rows' shared
prefixes are attended once per tile by a second launch before the merge; with a `Rope` the
kernels rotate q and k themselves (no separate RoPE launch). The engine's decode graphs use it
where `triton_decode_wins` (EngineConfig.graph_decode_attention "auto"), or always ("triton").
Importing this module does not import triton.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cache

import torch

from parrotlet_kernels import programmatic_launch
from parrotlet_kernels.interface import Rope
from parrotlet_kernels.triton_prefix_tiles import BLOCK_N, MAX_SPLITS, PrefixTiles, splits_to_fill

_DTYPES = (torch.float16, torch.bfloat16)


def triton_decode_wins(batch: int, longest: int) -> bool:
    """Whether this kernel beats flashinfer's decode (RoPE and the K/V append counted on both
    sides) for `batch` sequences of at most `longest` tokens.

    On the H100 (benchmarks/kernel_decode_attention.py, 2026-12-06, 64 tokens a loop step, two
    programs an SM) it won at 15 of 16 points of batch 1-64 x 160-16384 tokens: 1.6-2.5x at 160
    tokens, 1.28x at batch 1 / 16384, 1.07x at batch 8 / 16384, ties (within 1%) at batch 32 /
    16384 and batch 64 / 16384 (0.99x), 1.03x at batch 64 / 4096; with `plan_launch`'s
    launches (later that day) at all 16, 1.00x at batch 32 / 16384 and 1.01x at batch 64 /
    16384. Beyond 16384 tokens it is unmeasured; at batch 64 the limit sits between the last
    clear win and the tie.
    """
    return longest <= (16384 if batch < 64 else 8192)


def plan_splits(batch: int, num_kv_heads: int, num_sms: int) -> int:
    """KV splits per (sequence, KV head): enough programs to give every SM two, at most 16.

    Two, not one: on the H100 (benchmarks/kernel_decode_attention.py, 2026-12-06) batch 8 ran
    1.04-1.12x faster at 4 splits than at 2 (160-4096 tokens), while batch 32 and 64, which
    fill the SMs unsplit, only lost from splitting."""
    return splits_to_fill(batch * num_kv_heads, 2 * num_sms)


@dataclass(frozen=True)
class DecodeLaunch:
    """How paged_decode_kernel's programs run: `num_warps` each (4 or 8), and with `pipelined`
    the KV loop overlaps each block's loads with the previous block's math through Triton's
    cp.async pipeline instead of holding the next block in registers (at 4 warps: 112 registers
    a thread against 250, so four programs fit an SM instead of two;
    benchmarks/results/kernel_registers_notes.md)."""

    num_warps: int = 4
    pipelined: bool = False

    def __post_init__(self) -> None:
        if self.num_warps not in (4, 8):
            raise ValueError(f"num_warps must be 4 or 8, got {self.num_warps}")


def plan_launch(programs: int, num_sms: int) -> DecodeLaunch:
    """The launch for a grid of `programs` (sequences x KV heads x splits) on `num_sms` SMs.

    On the H100 (benchmarks/kernel_decode_attention.py, 2026-12-06; 132 SMs, 8 KV heads):
    - batch 1 (128 programs, at most one an SM): 8 warps won at every context, 3-5% at
      160-4096 tokens (6.10 vs 6.29 us at 160), 1% at 16384;
    - batch 8 and 32 (256 programs): 4 warps with register prefetch won, by 0-4% over the
      pipelined loop and 13-20% over 8 warps;
    - batch 64 (512 programs): the pipelined loop won at every context, by 16% at 160 tokens
      (22.4 vs 26.7 us), 2-4% from 1024 to 16384.
    Between 256 and 512 programs the threshold is unmeasured. Re-timed the same night, the
    planned launch was the fastest of the three, or within 0.3%, at all 16 points.
    """
    if programs <= num_sms:
        return DecodeLaunch(num_warps=8)
    if programs > 2 * num_sms:
        return DecodeLaunch(pipelined=True)
    return DecodeLaunch()


@cache
def num_sms(device: torch.device) -> int:
    """The device's SM count; 1 on CPU (Triton's interpreter, tests)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def paged_decode(
    q: torch.Tensor,  # [batch, num_heads, head_dim]
    k: torch.Tensor,  # [batch, num_kv_heads, head_dim], this step's keys
    v: torch.Tensor,  # [batch, num_kv_heads, head_dim]
    kv_cache: torch.Tensor,  # [num_blocks, 2, page_size, num_kv_heads, head_dim]
    kv_indptr: torch.Tensor,  # [batch + 1] int32
    kv_indices: torch.Tensor,  # int32 page ids
    last_page_len: torch.Tensor,  # [batch] int32, this step's token included
    key_rows: torch.Tensor,  # [batch] int64, cache row of this step's key (value: + page_size)
    num_splits: int,
    scale: float | None = None,
    prefix: PrefixTiles | None = None,
    rope: Rope | None = None,
    block_n: int = BLOCK_N,
    launch: DecodeLaunch | None = None,
    programmatic: bool = False,
) -> torch.Tensor:  # [batch, num_heads, head_dim]
    """Write each sequence's k/v at `key_rows`, then attend its pages (this token last).

    Sequence b reads pages `kv_indices[kv_indptr[b]:kv_indptr[b + 1]]`, full but for the last,
    which holds `last_page_len[b]` tokens; its new token sits at the last of them. Rows are
    rows of `kv_cache.view(-1, num_kv_heads, head_dim)`. With `prefix`, the prefix pages of
    sequence b's tile (also ids in `kv_indices`) come before those. Page ids, lengths and tiles
    are trusted (reading them would sync the device). With `rope`, q and k are rotated here
    (k as it is cached; the inputs stay as they are). Equal to softmax attention over the
    sequence's tokens. `block_n`: cached tokens per loop step of each program, a power-of-two
    multiple of the page size; `launch`: the paged kernel's warps and KV loop (default:
    `plan_launch` for its grid). With `programmatic` the kernels are launched with PDL
    where the device supports it (programmatic_launch.py).

    Raises:
        ValueError: a shape, dtype or device does not fit the description above.
    """
    check_inputs(
        q, k, v, kv_cache, kv_indptr, kv_indices, last_page_len, key_rows, num_splits, prefix
    )
    _check_rope(rope, batch=q.shape[0], head_dim=q.shape[2])
    if block_n < kv_cache.shape[2] or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two >= the page size {kv_cache.shape[2]}, "
                         f"got {block_n}")  # fmt: skip
    if q.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"paged_decode needs CUDA tensors (or TRITON_INTERPRET=1), got {q.device}")
    from parrotlet_kernels.triton_paged_decode_kernels import paged_decode_kernel

    batch, num_heads, head_dim = q.shape
    page_size, num_kv_heads = kv_cache.shape[2], kv_cache.shape[3]
    group = num_heads // num_kv_heads
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # contiguous
    slots = num_splits + (0 if prefix is None else prefix.shape.num_splits)
    if slots == 1:
        o_part, lse_part = out, out.new_empty(0, dtype=torch.float32)
    else:
        o_part = q.new_empty((batch, num_heads, slots, head_dim), dtype=torch.float32)
        lse_part = q.new_empty((batch, num_heads, slots), dtype=torch.float32)
    scale_log2 = (head_dim**-0.5 if scale is None else scale) * math.log2(math.e)
    launch = launch or plan_launch(batch * num_kv_heads * num_splits, num_sms(q.device))
    pdl = programmatic_launch.granted(programmatic, q.device)
    paged_decode_kernel[(batch, num_kv_heads, num_splits)](
        q, k, v, *_rope_args(q, rope), kv_cache, kv_indptr, kv_indices, last_page_len, key_rows,
        o_part, lse_part, num_kv_heads, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        v.stride(0), v.stride(1), scale_log2, GROUP=group,
        BLOCK_G=max(16, 1 << (group - 1).bit_length()), HEAD_DIM=head_dim, PAGE_SIZE=page_size,
        BLOCK_N=block_n, NUM_SPLITS=num_splits, NUM_SLOTS=slots, ROPE=rope is not None,
        PIPELINED=launch.pipelined, PDL=pdl, num_warps=launch.num_warps, launch_pdl=pdl,
    )  # fmt: skip
    if prefix is not None:
        _attend_prefixes(q, kv_cache, kv_indices, prefix, o_part, lse_part, scale_log2, rope, pdl)
    if slots > 1:
        from parrotlet_kernels.triton_shared_prefix_kernels import merge_kernel

        merge_kernel[(batch * num_heads,)](
            o_part, lse_part, out, slots, SLOTS=1 << (slots - 1).bit_length(),
            HEAD_DIM=head_dim, PDL=pdl, num_warps=2, launch_pdl=pdl,
        )  # fmt: skip
    return out


def _attend_prefixes(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    kv_indices: torch.Tensor,
    prefix: PrefixTiles,
    o_part: torch.Tensor,  # [batch, num_heads, slots, head_dim] float32
    lse_part: torch.Tensor,  # [batch, num_heads, slots] float32
    scale_log2: float,
    rope: Rope | None,
    pdl: bool,
) -> None:
    """Fill the last `prefix.shape.num_splits` slots: each tile's rows against its prefix."""
    from parrotlet_kernels.triton_paged_decode_kernels import prefix_tiles_kernel

    shape, num_kv_heads = prefix.shape, kv_cache.shape[3]
    prefix_tiles_kernel[(shape.programs, num_kv_heads, shape.num_splits)](
        q, *_rope_args(q, rope), kv_cache, kv_indices, prefix.rows, prefix.pages, o_part, lse_part,
        shape.max_tiles, shape.programs, num_kv_heads, q.stride(0), q.stride(1), scale_log2,
        GROUP=q.shape[1] // num_kv_heads, ROWS=shape.rows_per_tile, BLOCK_M=shape.block_m,
        HEAD_DIM=q.shape[2], PAGE_SIZE=kv_cache.shape[2], BLOCK_N=BLOCK_N,
        NUM_SLOTS=o_part.shape[2], NUM_SPLITS=shape.num_splits, ROPE=rope is not None,
        PDL=pdl, num_warps=shape.num_warps, launch_pdl=pdl,
    )  # fmt: skip


def _rope_args(q: torch.Tensor, rope: Rope | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' (positions, cos_sin) pointers; without RoPE any tensor (never read)."""
    return (q, q) if rope is None else (rope.positions, rope.cos_sin)


def check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    last_page_len: torch.Tensor,
    key_rows: torch.Tensor,
    num_splits: int,
    prefix: PrefixTiles | None = None,
) -> None:
    """ValueError naming the first argument that does not fit `paged_decode`'s description."""
    if q.dim() != 3 or kv_cache.dim() != 5 or kv_cache.shape[1] != 2:
        raise ValueError(
            "q must be [batch, num_heads, head_dim] and kv_cache [num_blocks, 2, page_size, "
            f"num_kv_heads, head_dim], got {tuple(q.shape)} and {tuple(kv_cache.shape)}"
        )
    batch, num_heads, head_dim = q.shape
    _, _, page_size, num_kv_heads, cache_dim = kv_cache.shape
    if q.dtype not in _DTYPES or kv_cache.dtype != q.dtype:
        raise ValueError(f"q and kv_cache must share float16 / bfloat16, got {q.dtype}, "
                         f"{kv_cache.dtype}")  # fmt: skip
    if cache_dim != head_dim or head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim must be a power of two >= 16 on q and kv_cache, got "
                         f"{head_dim} and {cache_dim}")  # fmt: skip
    if page_size < 16 or page_size & (page_size - 1):
        raise ValueError(f"page_size must be a power of two >= 16, got {page_size}")
    if num_heads % num_kv_heads:
        raise ValueError(f"q's num_heads ({num_heads}) must be a multiple of num_kv_heads "
                         f"({num_kv_heads})")  # fmt: skip
    for name, x in (("k", k), ("v", v)):
        if tuple(x.shape) != (batch, num_kv_heads, head_dim) or x.dtype != q.dtype:
            raise ValueError(f"{name} must be [{batch}, {num_kv_heads}, {head_dim}] "
                             f"{q.dtype}, got {tuple(x.shape)} {x.dtype}")  # fmt: skip
    _check_index("kv_indptr", kv_indptr, torch.int32, (batch + 1,))
    _check_index("last_page_len", last_page_len, torch.int32, (batch,))
    _check_index("key_rows", key_rows, torch.int64, (batch,))
    _check_index("kv_indices", kv_indices, torch.int32, None)
    if not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"num_splits must be in [1, {MAX_SPLITS}], got {num_splits}")
    if not kv_cache.is_contiguous() or q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("kv_cache must be contiguous and q, k, v contiguous in head_dim")
    group = num_heads // num_kv_heads
    if prefix is not None and prefix.shape.rows_per_tile * group > prefix.shape.block_m:
        raise ValueError(f"prefix tiles of {prefix.shape} cannot hold rows of {group} heads")


def _check_rope(rope: Rope | None, batch: int, head_dim: int) -> None:
    if rope is None:
        return
    pos, cos_sin = rope.positions, rope.cos_sin
    if pos.dtype not in (torch.int32, torch.int64) or tuple(pos.shape) != (batch,):
        raise ValueError(f"rope.positions must be int32 / int64 of shape ({batch},), got "
                         f"{pos.dtype} {tuple(pos.shape)}")  # fmt: skip
    if cos_sin.dtype != torch.float32 or cos_sin.dim() != 2 or cos_sin.shape[1] != head_dim:
        raise ValueError(f"rope.cos_sin must be float32 [max_positions, {head_dim}], got "
                         f"{cos_sin.dtype} {tuple(cos_sin.shape)}")  # fmt: skip
    if not (pos.is_contiguous() and cos_sin.is_contiguous()):
        raise ValueError("rope.positions and rope.cos_sin must be contiguous")


def _check_index(name: str, x: torch.Tensor, dtype: torch.dtype, shape: tuple | None) -> None:
    if x.dtype != dtype or x.dim() != 1 or (shape is not None and tuple(x.shape) != shape):
        want = "1-D" if shape is None else f"shape {shape}"
        raise ValueError(f"{name} must be {dtype} of {want}, got {x.dtype} {tuple(x.shape)}")
