"""Decode attention for CUDA graphs: fixed device buffers planned outside the graph, run inside.

The engine's decode graphs (backend/parrotlet/engine/cuda_graphs.py) hold one
GraphDecodeAttention built on the step backend's caches and flashinfer ops; per step the runner
plans it (page tables, slots, optional prefix tiles) and replays the graph of that batch size,
whose attention layers call forward(): flashinfer's graph-mode decode wrapper, or parrotlet's
Triton append + paged decode (triton_paged_decode.py) with prefix tiles (triton_prefix_tiles.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from parrotlet_kernels.flashinfer_backend import FlashInferBackend, PlanFence
from parrotlet_kernels.interface import Rope
from parrotlet_kernels.triton_prefix_tiles import PrefixTiles, TiledPages, TileShape, tile_shape


class GraphDecodeAttention:
    """Paged decode over fixed device buffers: plan() outside a CUDA graph, forward() inside.

    One object serves every graph batch size up to `max_batch_size`, one flashinfer wrapper (in
    CUDA-graph mode) per size, all sharing the page-table buffers (one graph runs at a time).
    Each row is one sequence with one query token. `plan(slots, ...)` reads the rows' cache slots
    from a device tensor the caller filled, so a step costs the caller's single host->device copy
    plus one of the plan's own (flashinfer's schedule, or the Triton kernel's page tables, which
    read the caller's `pages` in place). forward() writes k/v at those slots, then attends; it does
    only device work, so a graph captured once per batch size replays any later plan of that size.
    Each plan names its kernel, one of `kernels`: "flashinfer", or "triton", parrotlet's fused
    append + paged decode (triton_paged_decode.py; one launch, plus a merge where it splits the
    KV). `kernel` "auto" allows both (the caller picks per step: `triton_decode_wins`). With
    `prefix_tiles`, a plan may carry prefix tiles (triton_prefix_tiles.py, laid out by the caller
    for `prefix_shape(batch size)`): that step runs the Triton kernel plus the launch that reads
    each shared prefix once per tile. A graph captured after a plan serves only plans of the same
    kernel and tiles. Where the Triton kernel runs, `applies_rope` is true: the model hands over q
    and k unrotated with a `Rope`, and the kernel rotates them; with `programmatic` it is launched
    with PDL where the device supports it (programmatic_launch.py).
    """

    def __init__(
        self,
        backend: FlashInferBackend,
        max_batch_size: int,
        max_pages: int,
        kernel: str = "flashinfer",
        prefix_tiles: bool = False,
        programmatic: bool = False,
    ) -> None:
        if kernel not in ("flashinfer", "triton", "auto"):
            raise ValueError(f"kernel must be flashinfer, triton or auto, got {kernel!r}")
        self.kernels = ("flashinfer", "triton") if kernel == "auto" else (kernel,)
        if "flashinfer" in self.kernels and backend.ops.make_graph_decode is None:
            raise ValueError("the backend's FlashInferOps has no make_graph_decode")
        self.spec, self.kv_caches = backend.spec, backend.kv_caches
        self._rows, self._make = backend.cache_rows, backend.ops.make_graph_decode
        device, i32 = self.spec.device, torch.int32
        self._indptr = torch.zeros(max_batch_size + 1, dtype=i32, device=device)
        self._indices = torch.zeros(max_pages, dtype=i32, device=device)
        self._last = torch.zeros(max_batch_size, dtype=i32, device=device)
        self._key_rows = torch.zeros(max_batch_size, dtype=torch.long, device=device)
        self._value_rows = torch.zeros(max_batch_size, dtype=torch.long, device=device)
        self._wrappers: dict[int, Any] = {}
        self._fence = PlanFence(device)
        self._splits: dict[int, int] = {}
        self.prefix_tiles = prefix_tiles
        self.programmatic = programmatic
        self.planned_kernel = self.kernels[0]  # the last plan's
        self.with_prefix = False  # whether the last plan has prefix tiles
        # The Triton kernel's tables, one copy a plan: kv_indptr, last_page_len, tile tables
        self._tables = torch.zeros(self._tables_len(max_batch_size), dtype=i32, device=device)
        self._pages = self._indices  # the Triton kernel's page ids: the last plan's `pages`

    @property
    def max_pages(self) -> int:
        return self._indices.numel()

    @property
    def applies_rope(self) -> bool:
        """Whether forward() rotates q and k itself (the Triton kernel runs the planned step)."""
        return self.planned_kernel == "triton"

    def prefix_shape(self, batch_size: int) -> TileShape:
        """The prefix-tile launch of a graph of `batch_size` rows (Triton kernel)."""
        from parrotlet_kernels.triton_paged_decode import num_sms

        spec = self.spec
        group = spec.num_heads // spec.num_kv_heads
        return tile_shape(batch_size, group, spec.num_kv_heads, num_sms(spec.device))

    def plan(
        self,
        slots: torch.Tensor,  # [batch_size] int, cache slot of each row's new token (device)
        kv_indptr: Sequence[int],  # [batch_size + 1], row r reads pages[kv_indptr[r]:...[r+1]]
        last_page_len: Sequence[int],  # [batch_size]
        pages: torch.Tensor,  # [>= kv_indptr[-1]] int32 page ids (device)
        tiles: TiledPages | None = None,  # the prefix tiles (Triton), `pages` in its layout
        kernel: str | None = None,  # one of `kernels`; None: the first (Triton with tiles)
    ) -> None:
        """Fill the buffers of batch size `len(last_page_len)`; no device sync."""
        batch_size, spec, bs = len(last_page_len), self.spec, self.spec.block_size
        if pages.numel() > self.max_pages:
            raise ValueError(f"{pages.numel()} pages exceed the buffer of {self.max_pages}")
        if tiles is not None and not self.prefix_tiles:
            raise ValueError("prefix tiles need GraphDecodeAttention(prefix_tiles=True)")
        allowed = ("triton",) if tiles is not None else self.kernels
        kernel = kernel or allowed[0]
        if kernel not in allowed:
            raise ValueError(f"kernel {kernel!r} cannot run this plan; it allows {allowed}")
        self._fence.wait()
        key_rows, value_rows = self._key_rows[:batch_size], self._value_rows[:batch_size]
        torch.add(slots, slots.div(bs, rounding_mode="floor") * bs, out=key_rows)
        torch.add(key_rows, bs, out=value_rows)
        self.with_prefix, self.planned_kernel = tiles is not None, kernel
        if kernel == "triton":  # read on the device: `pages` as given, the rest in one copy
            tables = [*kv_indptr, *last_page_len]
            if tiles is not None:
                tables += tiles.tile_rows + tiles.tile_pages
            copy_to_device(tables, self._tables)
            self._pages = pages
            return
        wrapper = self._wrapper(batch_size)
        wrapper.plan(
            torch.tensor(kv_indptr, dtype=torch.int32),
            pages,
            torch.tensor(last_page_len, dtype=torch.int32),
            spec.num_heads,
            spec.num_kv_heads,
            spec.head_dim,
            bs,
            q_data_type=spec.dtype,
            kv_data_type=spec.dtype,
            sm_scale=spec.scale,
        )
        self._fence.passed()

    def forward(
        self,
        q: torch.Tensor,  # [batch_size, num_heads, head_dim]
        k: torch.Tensor,  # [batch_size, num_kv_heads, head_dim]
        v: torch.Tensor,  # [batch_size, num_kv_heads, head_dim]
        layer: int,
        rope: Rope | None = None,
    ) -> torch.Tensor:  # [batch_size, num_heads, head_dim]
        """Write k/v at the planned slots of `layer`'s cache, then decode every row (rotating q
        and k first when given `rope`, which needs `applies_rope`)."""
        batch_size = q.shape[0]
        if self.applies_rope:
            return self._triton_forward(q, k, v, layer, rope)
        if rope is not None:
            raise ValueError("this plan's kernel (flashinfer) does not apply RoPE")
        rows = self._rows[layer]  # [num_blocks * 2 * block_size, num_kv_heads, head_dim]
        rows.index_copy_(0, self._key_rows[:batch_size], k.to(rows.dtype))
        rows.index_copy_(0, self._value_rows[:batch_size], v.to(rows.dtype))
        return self._wrappers[batch_size].run(q.contiguous(), self.kv_caches[layer])

    def _triton_forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int, rope: Rope | None
    ) -> torch.Tensor:
        from parrotlet_kernels.triton_paged_decode import num_sms, paged_decode, plan_splits

        batch_size, spec = q.shape[0], self.spec
        if batch_size not in self._splits:
            sms = num_sms(spec.device)
            self._splits[batch_size] = plan_splits(batch_size, spec.num_kv_heads, sms)
        b, tables = batch_size, self._tables
        return paged_decode(
            q, k.to(spec.dtype), v.to(spec.dtype), self.kv_caches[layer],
            tables[: b + 1], self._pages, tables[b + 1 : 2 * b + 1],
            self._key_rows[:b], self._splits[b], scale=spec.scale,
            prefix=self._prefix_tiles(b) if self.with_prefix else None, rope=rope,
            programmatic=self.programmatic,
        )  # fmt: skip

    def _tables_len(self, batch_size: int) -> int:
        """Elements of the Triton tables of `batch_size` rows: kv_indptr, last_page_len, then
        with prefix tiles the tile rows and tile pages (`_prefix_tiles`)."""
        if not self.prefix_tiles:
            return 2 * batch_size + 1
        shape = self.prefix_shape(batch_size)
        return 2 * batch_size + 1 + shape.max_tiles * (shape.rows_per_tile + 2)

    def _prefix_tiles(self, batch_size: int) -> PrefixTiles:
        """Views of the tile tables in the layout of `batch_size` (tile rows, then pages)."""
        shape = self.prefix_shape(batch_size)
        rows_at = 2 * batch_size + 1
        pages_at = rows_at + shape.max_tiles * shape.rows_per_tile
        return PrefixTiles(
            self._tables[rows_at:pages_at].view(shape.max_tiles, shape.rows_per_tile),
            self._tables[pages_at : pages_at + 2 * shape.max_tiles].view(shape.max_tiles, 2),
            shape,
        )

    def _wrapper(self, batch_size: int) -> Any:
        if batch_size not in self._wrappers:
            self._wrappers[batch_size] = self._make(
                self._indptr[: batch_size + 1], self._indices, self._last[:batch_size]
            )
        return self._wrappers[batch_size]


def copy_to_device(values: Sequence[int], out: torch.Tensor) -> None:
    """Write host ints into the front of the int32 tensor `out` with one asynchronous copy
    (staged in pinned memory on CUDA, whose caching allocator keeps it until the copy ran)."""
    host = torch.tensor(values, dtype=torch.int32)
    if out.is_cuda:
        host = host.pin_memory()
    out[: host.numel()].copy_(host, non_blocking=True)
