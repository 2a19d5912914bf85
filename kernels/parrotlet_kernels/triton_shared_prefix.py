"""Fused shared-prefix decode attention (Hydragen-style) in Triton, for one layer's paged cache.

Decode steps whose sequences share a long prefix call `shared_prefix_decode`: every query of the
group attends the prefix KV as one matrix product per KV head and KV block (the prefix is read once
per step, not once per sequence), split over the prefix so the grid fills the GPU; the same launch
attends each sequence's own suffix; a second small kernel merges the partial states by log-sum-exp.
Importing this module does not import triton; the kernels (triton_shared_prefix_kernels.py) are
loaded on the first launch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from parrotlet_kernels.triton_paged_decode import num_sms

_DTYPES = (torch.float16, torch.bfloat16)
_MIN_CHUNK = 128  # fewest prefix tokens one split covers by default
_SUFFIX_BLOCK_N = 64  # suffix tokens per KV block
_UNFUSED_FROM_ROWS = 256  # query rows a KV head from which the suffixes get their own kernel
# How the warp-specialized kernel's two consumer warpgroups order their work (its SCHEDULE):
# each block in turn; FA3's order (block j's softmax while block j - 1's P·V runs); and that
# order with the consumers taking turns to issue their matrix products.
CONSUMER_ORDERS = ("serial", "overlap", "pingpong")


@dataclass(frozen=True)
class SharedPrefixLaunch:
    """How the prefix kernel runs: `num_splits` chunks of `chunk_len` tokens, rows by `block_m`.

    The prefix kernel's grid is (ceil(batch * group / block_m), num_kv_heads, num_splits); each
    program streams its chunk in KV blocks of `block_n` tokens. `fits(prefix_len)` must hold:
    the splits cover the prefix and none is empty (an empty split would merge 0/0). Without
    `fuse_suffix` a third kernel, between prefix and merge, attends the suffixes. A
    `warp_specialized` launch runs the prefix programs as the Gluon kernel of
    gluon_shared_prefix_kernels.py (Hopper only; `num_stages` KV slots; `num_warps` unused):
    compiled offline, not yet run on a GPU (see benchmarks/results/kernel_shared_prefix_notes.md).
    """

    block_m: int
    block_n: int
    chunk_len: int
    num_splits: int
    num_warps: int = 8
    num_stages: int = 3
    fuse_suffix: bool = True  # suffixes attended inside the prefix kernel, not by their own
    partial_dtype: torch.dtype = torch.float32  # of the per-slot normalized outputs
    warp_specialized: bool = False  # the Gluon prefix kernel (Hopper): loader + 2 consumers
    consumer_order: str = "overlap"  # (warp_specialized) one of CONSUMER_ORDERS

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n"):
            size = getattr(self, name)
            if size < 16 or size & (size - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {size}")
        for name in ("chunk_len", "num_splits", "num_warps", "num_stages"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.partial_dtype not in (torch.float32, *_DTYPES):
            raise ValueError(f"partial_dtype must be a float type, got {self.partial_dtype}")
        if self.warp_specialized and (self.block_m != 128 or self.fuse_suffix):
            raise ValueError("a warp_specialized launch has block_m 128 and unfused suffixes")
        if self.consumer_order not in CONSUMER_ORDERS:
            raise ValueError(
                f"consumer_order must be one of {CONSUMER_ORDERS}, got {self.consumer_order!r}"
            )

    def fits(self, prefix_len: int) -> bool:
        """Whether the splits cover `prefix_len` tokens with at least one token each."""
        return (
            (self.num_splits - 1) * self.chunk_len
            < prefix_len
            <= (self.num_splits * self.chunk_len)
        )


def plan_launch(
    batch: int,
    group: int,
    num_kv_heads: int,
    prefix_len: int,
    num_sms: int,
    num_splits: int | None = None,
) -> SharedPrefixLaunch:
    """Pick the row tile and the split of the prefix so the prefix grid fills the device.

    Without `num_splits`, the grid is one wave: as many splits as fit one program per SM
    (programs are compute-bound and equal, so a second wave would only add float32 partials to
    write and merge), with every chunk at least `_MIN_CHUNK` tokens. Chunks are whole KV blocks,
    so the split count may come out lower than asked. From 256 query rows a KV head the suffixes
    get their own kernel: on the H100 that was faster at every point timed (64 x 8K: 51.7 vs
    55.0 us on 2026-12-07, 50.3 vs 54.2 on 2026-12-05; 128 x 8K 86.2 vs 94.8; 64 x 4K 36.4 vs
    39.0; benchmarks/results/kernel_shared_prefix_notes.md); smaller batches are unmeasured.
    Row tiles stay at 128: 256-row programs of 16 warps, which fit 128 registers only with a
    cp.async pipelined loop, took 57.2 us at 64 x 8K against 51.8 (revive from 7d266fd).
    """
    if prefix_len < 1:
        raise ValueError(f"prefix_len must be >= 1, got {prefix_len}")
    rows = batch * group
    block_m, block_n = (64, 64) if rows <= 64 else (128, 64)
    row_tiles = -(-rows // block_m)
    if num_splits is None:
        one_wave = num_sms // (row_tiles * num_kv_heads)
        num_splits = max(1, min(prefix_len // _MIN_CHUNK, one_wave))
    elif num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    chunk_len = -(-prefix_len // num_splits)
    chunk_len = -(-chunk_len // block_n) * block_n
    num_warps = 8 if block_m > 64 else 4
    splits = -(-prefix_len // chunk_len)
    return SharedPrefixLaunch(
        block_m, block_n, chunk_len, splits, num_warps, fuse_suffix=rows < _UNFUSED_FROM_ROWS
    )


def shared_prefix_decode(
    q: torch.Tensor,  # [batch, num_heads, head_dim]
    kv_cache: torch.Tensor,  # [num_blocks, 2, page_size, num_kv_heads, head_dim]
    prefix_pages: torch.Tensor,  # [>= ceil(prefix_len / page_size)] int32
    prefix_len: int,
    suffix_pages: torch.Tensor,  # [batch, max_suffix_pages] int32
    suffix_lens: torch.Tensor,  # [batch] int32
    *,
    scale: float | None = None,
    launch: SharedPrefixLaunch | None = None,
) -> torch.Tensor:  # [batch, num_heads, head_dim], dtype of q
    """Decode attention of `batch` sequences over one shared prefix plus each one's own suffix.

    Sequence b attends the first `prefix_len` tokens of the pages `prefix_pages` (token t at slot
    t % page_size of page prefix_pages[t // page_size]) followed by `suffix_lens[b]` tokens of
    its pages `suffix_pages[b]`, numbered from slot 0 of its first page; a suffix may be empty.
    Query head h reads KV head h // (num_heads // num_kv_heads); the scale defaults to
    1/sqrt(head_dim) and `launch` to plan_launch's choice for this device. Equivalent to plain
    softmax attention over prefix + suffix, computed in float32. Page ids and suffix lengths are
    trusted (reading them would sync the device): `suffix_lens[b] <= max_suffix_pages *
    page_size` and every page id < num_blocks.

    Raises:
        ValueError: a shape, dtype or device does not fit the description above.
    """
    check_inputs(q, kv_cache, prefix_pages, prefix_len, suffix_pages, suffix_lens)
    if launch is not None and launch.warp_specialized:
        _check_warp_specialized(q)
    if q.device.type != "cuda":
        raise ValueError(f"shared_prefix_decode needs CUDA tensors, got {q.device}")
    batch, num_heads, head_dim = q.shape
    num_kv_heads = kv_cache.shape[3]
    if launch is None:
        sms = num_sms(q.device)
        launch = plan_launch(batch, num_heads // num_kv_heads, num_kv_heads, prefix_len, sms)
    elif not launch.fits(prefix_len):
        raise ValueError(f"{launch} does not split a prefix of {prefix_len} tokens")
    scale = head_dim**-0.5 if scale is None else scale
    return _launch(q, kv_cache, prefix_pages, prefix_len, suffix_pages, suffix_lens, scale, launch)


def check_inputs(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    prefix_pages: torch.Tensor,
    prefix_len: int,
    suffix_pages: torch.Tensor,
    suffix_lens: torch.Tensor,
) -> None:
    """Raise ValueError naming the argument whose shape, dtype, layout or device is wrong."""
    if q.dim() != 3:
        raise ValueError(f"q must be [batch, num_heads, head_dim], got shape {tuple(q.shape)}")
    if kv_cache.dim() != 5 or kv_cache.shape[1] != 2:
        raise ValueError(
            "kv_cache must be [num_blocks, 2, page_size, num_kv_heads, head_dim], "
            f"got shape {tuple(kv_cache.shape)}"
        )
    _check_heads(q, kv_cache)
    _check_dtypes_and_layout(q, kv_cache)
    _check_pages(q, kv_cache, prefix_pages, prefix_len, suffix_pages, suffix_lens)


def _check_warp_specialized(q: torch.Tensor) -> None:
    """The Gluon kernel's limits: head dim 64 or 128 (its layouts), and Hopper's wgmma."""
    if q.shape[2] not in (64, 128):
        raise ValueError(f"a warp_specialized launch needs head_dim 64 or 128, got {q.shape[2]}")
    capability = torch.cuda.get_device_capability(q.device) if q.is_cuda else None
    if capability is not None and capability[0] != 9:
        raise ValueError(f"a warp_specialized launch needs Hopper (sm_90), got {capability}")


def _check_heads(q: torch.Tensor, kv_cache: torch.Tensor) -> None:
    batch, num_heads, head_dim = q.shape
    num_kv_heads, cache_dim = kv_cache.shape[3], kv_cache.shape[4]
    if batch < 1:
        raise ValueError("q has an empty batch")
    if cache_dim != head_dim:
        raise ValueError(f"q has head_dim {head_dim}, kv_cache {cache_dim}")
    if num_heads % num_kv_heads:
        raise ValueError(
            f"q's num_heads ({num_heads}) must be a multiple of kv_cache's num_kv_heads "
            f"({num_kv_heads})"
        )
    if head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim must be a power of two >= 16, got {head_dim}")


def _check_dtypes_and_layout(q: torch.Tensor, kv_cache: torch.Tensor) -> None:
    if q.dtype not in _DTYPES:
        raise ValueError(f"q must be float16 or bfloat16, got {q.dtype}")
    if kv_cache.dtype != q.dtype:
        raise ValueError(f"kv_cache is {kv_cache.dtype}, q is {q.dtype}")
    if kv_cache.device != q.device:
        raise ValueError(f"kv_cache is on {kv_cache.device}, q on {q.device}")
    if q.stride(2) != 1:
        raise ValueError("q's head_dim must be contiguous (stride 1)")
    if not kv_cache.is_contiguous():
        raise ValueError("kv_cache must be contiguous")


def _check_pages(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    prefix_pages: torch.Tensor,
    prefix_len: int,
    suffix_pages: torch.Tensor,
    suffix_lens: torch.Tensor,
) -> None:
    batch, page_size = q.shape[0], kv_cache.shape[2]
    if prefix_len < 1:
        raise ValueError(f"prefix_len must be >= 1, got {prefix_len}")
    needed = -(-prefix_len // page_size)
    if prefix_pages.dim() != 1 or prefix_pages.numel() < needed:
        raise ValueError(
            f"prefix_pages must be 1-D with >= ceil({prefix_len} / {page_size}) = {needed} "
            f"page ids, got shape {tuple(prefix_pages.shape)}"
        )
    if suffix_pages.dim() != 2 or suffix_pages.shape[0] != batch:
        raise ValueError(
            f"suffix_pages must be [batch={batch}, max_suffix_pages], "
            f"got shape {tuple(suffix_pages.shape)}"
        )
    if tuple(suffix_lens.shape) != (batch,):
        raise ValueError(f"suffix_lens must be [batch={batch}], got {tuple(suffix_lens.shape)}")
    for name, tensor in (
        ("prefix_pages", prefix_pages),
        ("suffix_pages", suffix_pages),
        ("suffix_lens", suffix_lens),
    ):
        if tensor.dtype != torch.int32:
            raise ValueError(f"{name} must be int32, got {tensor.dtype}")
        if tensor.device != q.device:
            raise ValueError(f"{name} is on {tensor.device}, q on {q.device}")
    if suffix_pages.stride(1) != 1 or not prefix_pages.is_contiguous():
        raise ValueError("prefix_pages and the rows of suffix_pages must be contiguous")


def _launch(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    prefix_pages: torch.Tensor,
    prefix_len: int,
    suffix_pages: torch.Tensor,
    suffix_lens: torch.Tensor,
    scale: float,
    launch: SharedPrefixLaunch,
) -> torch.Tensor:
    """Prefix (+ fused suffix) kernel, [suffix kernel,] merge kernel, over partial buffers."""
    from parrotlet_kernels import triton_shared_prefix_kernels as kernels

    batch, num_heads, head_dim = q.shape
    num_kv_heads, page_size = kv_cache.shape[3], kv_cache.shape[2]
    group, slots = num_heads // num_kv_heads, launch.num_splits + 1
    o_part = q.new_empty((batch, num_heads, slots, head_dim), dtype=launch.partial_dtype)
    lse_part = q.new_empty((batch, num_heads, slots), dtype=torch.float32)
    strides = (q.stride(0), q.stride(1), *kv_cache.stride()[:4])
    scale_log2 = scale * math.log2(math.e)
    common = (*strides, suffix_pages.stride(0), scale_log2)
    heads = dict(GROUP=group, BLOCK_G=max(16, _next_power_of_2(group)), HEAD_DIM=head_dim)
    grid = (-(-batch * group // launch.block_m), num_kv_heads, launch.num_splits)
    if launch.warp_specialized:
        from parrotlet_kernels import gluon_shared_prefix_kernels as gluon_kernels

        gluon_kernels.ws_prefix_kernel[grid](
            q, kv_cache, prefix_pages, o_part, lse_part, batch, num_heads, slots, prefix_len,
            launch.chunk_len, *strides, scale_log2, GROUP=group, HEAD_DIM=head_dim,
            PAGE_SIZE=page_size, BLOCK_N=launch.block_n, STAGES=launch.num_stages,
            SCHEDULE=CONSUMER_ORDERS.index(launch.consumer_order), num_warps=4, maxnreg=168,
        )  # fmt: skip
    else:
        kernels.prefix_kernel[grid](
            q, kv_cache, prefix_pages, suffix_pages, suffix_lens, o_part, lse_part,
            batch, num_heads, slots, prefix_len, launch.chunk_len, *common, **heads,
            PAGE_SIZE=page_size, BLOCK_M=launch.block_m, BLOCK_N=launch.block_n,
            SUFFIX_BLOCK_N=_SUFFIX_BLOCK_N, FUSE_SUFFIX=launch.fuse_suffix,
            num_warps=launch.num_warps, num_stages=launch.num_stages,
        )  # fmt: skip
    if not launch.fuse_suffix:
        kernels.suffix_kernel[(batch, num_kv_heads)](
            q, kv_cache, suffix_pages, suffix_lens, o_part, lse_part, num_heads, slots,
            *common, **heads, PAGE_SIZE=page_size, BLOCK_N=_SUFFIX_BLOCK_N, num_warps=4,
        )  # fmt: skip
    out = q.new_empty((batch, num_heads, head_dim))
    merge_slots = _next_power_of_2(slots)
    kernels.merge_kernel[(batch * num_heads,)](
        o_part, lse_part, out, slots, SLOTS=merge_slots, HEAD_DIM=head_dim,
        num_warps=2 if merge_slots <= 16 else 4,
    )  # fmt: skip
    return out


def _next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (n >= 1)."""
    return 1 << (n - 1).bit_length()
