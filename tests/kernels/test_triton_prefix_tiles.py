"""Shared prefixes in the Triton graph decode: the tile layout on the host (exact values), and
paged_decode with prefix tiles against plain attention over each sequence's whole page list
under Triton's interpreter (float16) and on the GPU (`-m gpu`).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from parrotlet_kernels.interface import PrefixGroup
from parrotlet_kernels.triton_paged_decode import DecodeLaunch, paged_decode
from parrotlet_kernels.triton_prefix_tiles import (
    PrefixTiles,
    TileShape,
    tile_prefixes,
    tile_shape,
    worth_tiling,
)

from .attention_helpers import requires_triton, run_under_triton_interpreter
from .test_triton_paged_decode import Step, assert_same_cache, with_rope


# ---- CPU: launch shape and layout ------------------------------------------------------------
def test_tile_shape_fills_the_sms_for_one_group():
    # programs: one group's tiles plus one; the other tiles queue behind them
    assert tile_shape(32, 4, 8, 132) == TileShape(64, 16, 2 + 16 + 1, 8, 2 + 1)
    assert tile_shape(1, 4, 8, 132) == TileShape(64, 16, 1, 16, 1)
    assert tile_shape(8, 3, 3, 4) == TileShape(64, 21, 0 + 4 + 1, 1, 1 + 1)
    assert tile_shape(2, 128, 1, 132) == TileShape(128, 1, 2 + 1 + 1, 16, 2 + 1, 8)
    # from 256 query rows a KV head: tiles of 128 (32 sequences at GQA 4), unless block_m says
    assert tile_shape(64, 4, 8, 132) == TileShape(128, 32, 2 + 32 + 1, 8, 2 + 1, 8)
    assert tile_shape(256, 4, 8, 132) == TileShape(128, 32, 8 + 128 + 1, 2, 8 + 1, 8)
    assert tile_shape(256, 4, 8, 132, block_m=64) == TileShape(64, 16, 16 + 128 + 1, 1, 16 + 1)
    assert tile_shape(17, 4, 8, 132, block_m=128) == TileShape(128, 32, 0 + 8 + 1, 16, 1 + 1, 8)
    with pytest.raises(ValueError, match=r"programs must be in \[1, max_tiles=3\], got 4"):
        TileShape(64, 2, 3, 1, 4)
    with pytest.raises(ValueError, match="num_warps must be 4 or 8, got 6"):
        TileShape(64, 2, 3, 1, 3, 6)


def test_tile_shape_rejects_empty_sizes():
    with pytest.raises(ValueError, match="must be >= 1, got 0, 4, 8, 132"):
        tile_shape(0, 4, 8, 132)


# rows 0, 1, 4 share pages 10, 11; rows 2, 3 share 20; row 5 (a graph's padding row) shares none
INDPTR = [0, 3, 6, 8, 10, 13, 14]
PAGES = [10, 11, 12, 10, 11, 13, 20, 21, 20, 22, 10, 11, 14, 99]
GROUPS = [PrefixGroup((0, 1, 4), 2), PrefixGroup((2, 3), 1)]


def test_tile_prefixes_cuts_prefixes_and_tiles_the_rows():
    layout = tile_prefixes(INDPTR, PAGES, GROUPS, TileShape(64, 2, 6, 1, 6))
    assert layout.kv_indptr == [0, 1, 2, 3, 4, 5, 6]
    assert layout.pages == [12, 13, 21, 22, 14, 99, 10, 11, 20]
    # tiles: group 0 in two (rows 0, 1 / row 4), group 1, then rows without a prefix
    assert layout.tile_rows == [0, 1, 4, -1, 2, 3, 5, -1, -1, -1, -1, -1]
    assert layout.tile_pages == [6, 2, 6, 2, 8, 1, 0, 0, 0, 0, 0, 0]


def test_tile_prefixes_without_groups_keeps_the_pages():
    layout = tile_prefixes(INDPTR, PAGES, [], TileShape(64, 4, 3, 1, 3))
    assert (layout.kv_indptr, layout.pages) == (INDPTR, PAGES)
    assert layout.tile_rows == [0, 1, 2, 3, 4, 5, -1, -1, -1, -1, -1, -1]
    assert layout.tile_pages == [0] * 6


def test_tile_prefixes_checks_its_inputs():
    with pytest.raises(ValueError, match="row 5 has no page after its 1-page prefix"):
        tile_prefixes(INDPTR, PAGES, [PrefixGroup((4, 5), 1)], TileShape(64, 2, 6, 1, 6))
    with pytest.raises(ValueError, match="4 prefix tiles exceed the 3"):
        tile_prefixes(INDPTR, PAGES, GROUPS, TileShape(64, 2, 3, 1, 3))


def test_worth_tiling_weighs_the_bytes_saved():
    block = 16 * 2 * 8 * 128 * 2  # Llama-3-8B, page 16, bf16: 64 KiB per layer
    assert worth_tiling(PrefixGroup((0, 1, 2), 2048), block)  # 2 x 2048 blocks = 256 MiB
    assert not worth_tiling(PrefixGroup((0, 1, 2), 2047), block)
    assert not worth_tiling(PrefixGroup(tuple(range(16)), 64), block)  # 16 rows / 1K: 60 MiB
    assert worth_tiling(PrefixGroup(tuple(range(16)), 64), block, min_saved_bytes=60 << 20)


def test_prefix_tiles_check_their_tables():
    shape = TileShape(64, 2, 3, 1, 3)
    rows, pages = torch.zeros(3, 2, dtype=torch.int32), torch.zeros(3, 2, dtype=torch.int32)
    PrefixTiles(rows, pages, shape)
    with pytest.raises(ValueError, match=r"PrefixTiles.rows must be int32 \[3, 2\]"):
        PrefixTiles(rows.long(), pages, shape)
    with pytest.raises(ValueError, match=r"PrefixTiles.pages must be int32 \[3, 2\]"):
        PrefixTiles(rows, pages[:2], shape)


# ---- the kernels: a step whose sequences share prefixes ----------------------------------------
CASES = [  # (sequence lengths, (members, prefix pages) per group, heads, splits, prefix splits)
    ([40, 35, 50, 17, 33], [((0, 1, 2), 2), ((3, 4), 1)], (8, 2), 2, 2),
    ([200, 170, 90], [((0, 2), 5)], (4, 4), 1, 3),  # GQA 1, a row without a prefix
    ([65, 80, 49, 70], [((0, 1, 2, 3), 3)], (16, 2), 3, 1),  # GQA 8, tiles of 8 rows
    ([300, 310], [((0, 1), 18)], (8, 2), 4, 16),  # more prefix splits than pages
    # 68 query rows a KV head in tiles of 128 (32 sequences, 8 warps), two rows without a prefix
    ([40 + 3 * i for i in range(17)], [(tuple(range(2, 17)), 2)], (8, 2), 2, 2),
]


def shared_step(seq_lens, groups, heads, head_dim, dtype, device) -> Step:
    """A Step whose group members' page lists begin with their first member's pages."""
    step = Step(seq_lens, heads, head_dim, dtype=dtype, device=device)
    indices, indptr = step.indices.clone(), step.indptr.tolist()
    for members, count in groups:
        lead = indptr[members[0]]
        for row in members[1:]:
            indices[indptr[row] : indptr[row] + count] = indices[lead : lead + count]
    step.indices = indices
    return step


def check_kernel(
    device: str, dtype: torch.dtype, head_dim: int = 16, programmatic: bool = False
) -> None:
    """Every case; the odd ones with q and k rotated by the kernels; in cases 0 and 2 one
    program takes every tile in turn, in the others each tile has a program; case 4 in tiles of
    128 query rows; cases 1 and 4 with the paged kernel's pipelined KV loop; `programmatic`:
    the three kernels launched with PDL (on a GPU that has it)."""
    for i, (seq_lens, groups, heads, splits, prefix_splits) in enumerate(CASES):
        step = shared_step(seq_lens, groups, heads, head_dim, dtype, device)
        (q, k), rope = (step.q, step.k), None
        if i % 2:
            (q, k), rope = with_rope(step)
        cache, expected = step.reference()
        group = heads[0] // heads[1]
        shape = tile_shape(len(seq_lens), group, heads[1], 1, block_m=128 if i == 4 else None)
        programs = 1 if i % 4 == 0 or i == 2 else shape.max_tiles
        shape = replace(shape, num_splits=prefix_splits, programs=programs)
        layout = tile_prefixes(step.indptr.tolist(), step.indices.tolist(),
                               [PrefixGroup(m, n) for m, n in groups], shape)  # fmt: skip
        i32 = dict(dtype=torch.int32, device=device)
        tiles = PrefixTiles(torch.tensor(layout.tile_rows, **i32).view(shape.max_tiles, -1),
                            torch.tensor(layout.tile_pages, **i32).view(-1, 2), shape)  # fmt: skip
        own = (torch.tensor(layout.kv_indptr, **i32), torch.tensor(layout.pages, **i32))
        out = paged_decode(q, k, step.v, step.cache, *own, step.last, step.key_rows, splits,
                           prefix=tiles, rope=rope, launch=DecodeLaunch(pipelined=i in (1, 4)),
                           programmatic=programmatic)  # fmt: skip
        torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)
        assert_same_cache(step, cache, rotated=rope is not None)


@requires_triton
def test_kernel_under_the_triton_interpreter():
    code = "from tests.kernels.test_triton_prefix_tiles import check_kernel; import torch; "
    code += "check_kernel('cpu', torch.float16)"
    run_under_triton_interpreter(code)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("programmatic", [False, True])
def test_kernel_on_gpu(dtype: torch.dtype, programmatic: bool) -> None:
    check_kernel("cuda", dtype, 128, programmatic)
