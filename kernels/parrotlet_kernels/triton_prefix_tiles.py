"""Shared prefixes in the decode CUDA graph: which batch rows attend which prefix pages together.

With prefix tiles (GraphDecodeAttention(prefix_tiles=True), EngineConfig.graph_prefix_tiles), a
decode step whose sequences share prefixes reads each once per tile of rows, not once per
sequence: `tile_prefixes` lays the step out on the host as a table of tiles (up to
`rows_per_tile` rows of one prefix group and the group's prefix pages) and cuts each row's own
page list to the pages after its prefix; `prefix_tiles_kernel` attends the tiles, the paged
kernel the rows' own pages, and the merge adds them up. The tables have a fixed size per batch
size, so one captured graph serves every grouping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from parrotlet_kernels.interface import PrefixGroup

BLOCK_N = 64  # KV tokens per loop step of the decode kernels (prefix tiles; paged by default)
# KV reads a group's tiles must save per layer. On the H100 (2026-12-06, Llama-3-8B layers) the
# tiles lost to per-row paged decode saving 60 MiB (16 rows / 1K prefix: 23.1 vs 18.1 us), were
# level at 252 MiB (64 / 1K: 41.4 vs 43.2) and won from 293 MiB (a 16 x 5000 decode step 7.31
# vs 7.71 ms; 64 / 8K 2.8x).
MIN_SAVED_BYTES = 256 << 20
MAX_SPLITS = 16  # the most KV splits a row of the decode kernels (prefix tiles, paged) takes


def splits_to_fill(programs: int, num_sms: int) -> int:
    """KV splits that give `num_sms` SMs about one program each when `programs` programs cover
    the rows without splitting: at least 1, at most MAX_SPLITS."""
    return max(1, min(MAX_SPLITS, num_sms // programs))


@dataclass(frozen=True)
class TileShape:
    """The prefix launch of one graph batch size: grid (programs, num_kv_heads, num_splits).

    A tile's `block_m` query rows are `rows_per_tile` batch rows times their GQA group; a batch
    of B rows in groups of >= 2 never needs more than `max_tiles` = B // rows_per_tile + B // 2
    + 1 tiles (each group and the rows without one may leave one tile part full). Program p
    takes tiles p, p + programs, ... of the table, so the tables can be sized for the worst
    case without launching a program per unused tile.
    """

    block_m: int
    rows_per_tile: int
    max_tiles: int
    num_splits: int
    programs: int
    num_warps: int = 4  # of each program, 4 or 8

    def __post_init__(self) -> None:
        if not 1 <= self.programs <= self.max_tiles:
            raise ValueError(f"programs must be in [1, max_tiles={self.max_tiles}], "
                             f"got {self.programs}")  # fmt: skip
        if self.num_warps not in (4, 8):
            raise ValueError(f"num_warps must be 4 or 8, got {self.num_warps}")


@dataclass(frozen=True, eq=False)  # holds tensors: compared by identity
class PrefixTiles:
    """A step's tile tables on the device (a TiledPages' `tile_rows` / `tile_pages`)."""

    rows: torch.Tensor  # [max_tiles, rows_per_tile] int32
    pages: torch.Tensor  # [max_tiles, 2] int32
    shape: TileShape

    def __post_init__(self) -> None:
        shape = self.shape
        for name, want in (("rows", shape.rows_per_tile), ("pages", 2)):
            x = getattr(self, name)
            if x.dtype != torch.int32 or tuple(x.shape) != (shape.max_tiles, want):
                raise ValueError(f"PrefixTiles.{name} must be int32 [{shape.max_tiles}, {want}], "
                                 f"got {x.dtype} {tuple(x.shape)}")  # fmt: skip
            if not x.is_contiguous():
                raise ValueError(f"PrefixTiles.{name} must be contiguous")


def tile_shape(
    batch_size: int, group: int, num_kv_heads: int, num_sms: int, block_m: int | None = None
) -> TileShape:
    """The shape for `batch_size` rows of `group` query heads per KV head on `num_sms` SMs.

    Tiles take 64 query rows (at least one row's group, a power of 2), 128 from 256 rows a KV
    head: on the H100 (benchmarks/kernel_shared_prefix.py, 2026-12-07, GQA 4, us a layer)
    128-row tiles ran 51.6 vs 74.6 at batch 64 / 8K prefix, 28.0 vs 28.3 at 64 / 1K, 151.7 vs
    153.4 at 256 / 8K, and lost at 16 / 1K (64 query rows: 18.0 vs 17.3); batch 32 is
    unmeasured. (Until programs stopped at the first unused tile, 128-row tiles lost at batch
    64: 117.3 vs 85.0.) `block_m` overrides that.
    Programs have 4 warps, 8 for 128 rows.
    The prefix is split so a batch in one prefix group gives every SM about one program; there
    are programs for the tiles of one group plus one (rows without a prefix), and any further
    tiles (several groups) queue behind them.
    """
    if min(batch_size, group, num_kv_heads, num_sms) < 1:
        raise ValueError(
            f"batch_size, group, num_kv_heads and num_sms must be >= 1, got {batch_size}, "
            f"{group}, {num_kv_heads}, {num_sms}"
        )
    if block_m is None:
        block_m = max(128 if batch_size * group >= 256 else 64, 1 << (group - 1).bit_length())
    rows = block_m // group
    full_tiles = -(-batch_size // rows)
    splits = splits_to_fill(full_tiles * num_kv_heads, num_sms)
    max_tiles = batch_size // rows + batch_size // 2 + 1
    programs, warps = min(max_tiles, full_tiles + 1), 8 if block_m > 64 else 4
    return TileShape(block_m, rows, max_tiles, splits, programs, warps)


def worth_tiling(
    group: PrefixGroup, block_bytes: int, min_saved_bytes: int = MIN_SAVED_BYTES
) -> bool:
    """Whether reading `group`'s prefix once per tile saves at least `min_saved_bytes` of KV
    reads per layer, to pay for the extra launch and the tiles' slower reads (`block_bytes`: one
    KV block of one layer)."""
    return (len(group.seq_indices) - 1) * group.num_blocks * block_bytes >= min_saved_bytes


@dataclass(frozen=True)
class TiledPages:
    """One step's page layout for the paged kernel plus the prefix tiles.

    Row r reads its own pages `pages[kv_indptr[r]:kv_indptr[r + 1]]` (those after its prefix);
    tile t holds the rows `tile_rows[t * rows_per_tile:...]` (-1 past its last) that attend the
    `tile_pages[2t + 1]` prefix pages from `pages[tile_pages[2t]]`; a tile of 0 pages covers
    rows without a shared prefix, and the unused tiles, after all the others, have no rows.
    """

    kv_indptr: list[int]  # [batch_size + 1]
    pages: list[int]  # the rows' own pages, then each group's prefix pages
    tile_rows: list[int]  # [max_tiles * rows_per_tile]
    tile_pages: list[int]  # [max_tiles * 2]


def tile_prefixes(
    kv_indptr: Sequence[int],  # [batch_size + 1] over `pages`, each row's whole page list
    pages: Sequence[int],
    groups: Sequence[PrefixGroup],  # disjoint; each member's pages begin with the prefix
    shape: TileShape,
) -> TiledPages:
    """Cut the groups' prefixes out of their members' page lists and tile every row."""
    batch_size = len(kv_indptr) - 1
    skip = [0] * batch_size
    for group in groups:
        for row in group.seq_indices:
            if kv_indptr[row + 1] - kv_indptr[row] <= group.num_blocks:
                raise ValueError(f"row {row} has no page after its {group.num_blocks}-page prefix")
            skip[row] = group.num_blocks
    own_indptr, own = [0], []
    for row in range(batch_size):
        own.extend(pages[kv_indptr[row] + skip[row] : kv_indptr[row + 1]])
        own_indptr.append(len(own))
    tiles: list[tuple[list[int], int, int]] = []  # (rows, first page, number of pages)
    grouped = {row for group in groups for row in group.seq_indices}
    for group in groups:
        first = len(own)
        lead = kv_indptr[group.seq_indices[0]]
        own.extend(pages[lead : lead + group.num_blocks])
        tiles += _chunks(group.seq_indices, shape.rows_per_tile, first, group.num_blocks)
    alone = [row for row in range(batch_size) if row not in grouped]
    tiles += _chunks(alone, shape.rows_per_tile, 0, 0)
    if len(tiles) > shape.max_tiles:
        raise ValueError(f"{len(tiles)} prefix tiles exceed the {shape.max_tiles} of {shape}")
    tile_rows = [-1] * (shape.max_tiles * shape.rows_per_tile)
    tile_pages = [0] * (shape.max_tiles * 2)
    for t, (rows, first, count) in enumerate(tiles):
        tile_rows[t * shape.rows_per_tile : t * shape.rows_per_tile + len(rows)] = rows
        tile_pages[2 * t : 2 * t + 2] = [first, count]
    return TiledPages(own_indptr, own, tile_rows, tile_pages)


def _chunks(
    rows: Sequence[int], size: int, first: int, count: int
) -> list[tuple[list[int], int, int]]:
    return [(list(rows[i : i + size]), first, count) for i in range(0, len(rows), size)]
