"""CUDA graphs for decode-only steps: the ModelRunner replays one graph per bucketed batch size.

A decode step launches hundreds of small kernels whose host cost exceeds their run time; a graph
captured once per batch size replays them with one launch. The batch is padded up to the nearest
size in `graph_batch_sizes`; prefill, mixed and cascade steps stay eager (ModelRunner decides).
Each size has a graph per decode attention it may use: flashinfer's and parrotlet's Triton kernel
(under "auto", whichever wins at the step's batch size and longest context), and with prefix
tiles on, one that reads each long shared prefix once per tile of rows (triton_prefix_tiles.py).
All are captured at engine start.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import Counter
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, replace

import torch

from parrotlet.engine.models.llama import FusedKernels, LlamaForCausalLM
from parrotlet.engine.sequence import Sequence
from parrotlet_kernels.flashinfer_backend import FlashInferBackend
from parrotlet_kernels.graph_decode import GraphDecodeAttention, copy_to_device
from parrotlet_kernels.interface import PrefixGroup
from parrotlet_kernels.triton_paged_decode import triton_decode_wins
from parrotlet_kernels.triton_prefix_tiles import (
    MIN_SAVED_BYTES,
    TiledPages,
    TileShape,
    tile_prefixes,
    worth_tiling,
)

logger = logging.getLogger(__name__)


def graph_batch_sizes(max_num_seqs: int) -> tuple[int, ...]:
    """1, 2, 4, 8, then every multiple of 16, up to and including `max_num_seqs`."""
    if max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
    sizes = {s for s in (1, 2, 4, 8) if s <= max_num_seqs}
    sizes.update(range(16, max_num_seqs + 1, 16))
    sizes.add(max_num_seqs)
    return tuple(sorted(sizes))


def bucket_for(sizes: Seq[int], num_seqs: int) -> int | None:
    """The smallest of the sorted `sizes` that holds `num_seqs`, None when none does."""
    i = bisect.bisect_left(sizes, num_seqs)
    return sizes[i] if i < len(sizes) else None


@dataclass(frozen=True)
class PaddedDecode:
    """One decode step's inputs as host lists, padded to `batch_size` rows (row i < num_seqs is
    sequence i, computing one token).

    Padding rows decode token 0 at position 0 over one page (the first page of sequence 0) and
    write their k/v into `pad_slot`: a slot of a sequence's partly filled last block past its
    last token. Nothing reads it this step, its owner writes it before reading it, and a partly
    filled block is never shared, so padding changes no sequence's output.
    """

    num_seqs: int
    batch_size: int
    input_ids: list[int]  # [batch_size]
    positions: list[int]  # [batch_size]
    slots: list[int]  # [batch_size], block_id * block_size + offset
    kv_indptr: list[int]  # [batch_size + 1]
    last_page_len: list[int]  # [batch_size]
    pages: list[int]  # [>= kv_indptr[-1]]
    tiles: TiledPages | None = None  # prefix tiles; kv_indptr and pages are then its own
    kernel: str = "flashinfer"  # the decode attention: flashinfer or triton (always with tiles)

    @property
    def variant(self) -> str:
        """Which graph of its batch size runs the step: flashinfer, triton or tiles."""
        return "tiles" if self.tiles is not None else self.kernel


def pad_decode_batch(seqs: Seq[Sequence], batch_size: int, block_size: int) -> PaddedDecode | None:
    """The inputs of a step computing one token (its next uncomputed) of every sequence; None if
    padding finds no free slot.

    Each sequence's `block_ids` holds exactly the blocks of its computed tokens plus this one (as
    the scheduler leaves them).
    """
    n = len(seqs)
    assert 0 < n <= batch_size, (n, batch_size)
    seq_lens = [s.num_computed_tokens + 1 for s in seqs]
    slots = [
        s.block_ids[(L - 1) // block_size] * block_size + (L - 1) % block_size
        for s, L in zip(seqs, seq_lens, strict=True)
    ]
    pad = batch_size - n
    if pad:
        free = [slot + 1 for slot, L in zip(slots, seq_lens, strict=True) if L % block_size]
        if not free:
            return None
        slots += [free[0]] * pad
    pages: list[int] = []
    kv_indptr = [0]
    for s, L in zip(seqs, seq_lens, strict=True):
        pages.extend(s.block_ids[: -(-L // block_size)])
        kv_indptr.append(len(pages))
    pages.extend([seqs[0].block_ids[0]] * pad)
    kv_indptr.extend(range(kv_indptr[-1] + 1, kv_indptr[-1] + pad + 1))
    return PaddedDecode(
        num_seqs=n,
        batch_size=batch_size,
        input_ids=[s.token_ids[L - 1] for s, L in zip(seqs, seq_lens, strict=True)] + [0] * pad,
        positions=[L - 1 for L in seq_lens] + [0] * pad,
        slots=slots,
        kv_indptr=kv_indptr,
        last_page_len=[(L - 1) % block_size + 1 for L in seq_lens] + [1] * pad,
        pages=pages,
    )


def warmup_decode(batch_size: int, block: int, block_size: int) -> PaddedDecode:
    """A decode step of `batch_size` rows that reads and writes only `block` (a free block: its
    contents are garbage to whoever takes it next, who writes before reading).

    Row r computes token `block_size` of a two-page sequence (both pages `block`) and writes slot
    r % block_size; with `warmup_tiles`, the first page is a prefix all rows share.
    """
    return PaddedDecode(
        num_seqs=batch_size,
        batch_size=batch_size,
        input_ids=[0] * batch_size,
        positions=[block_size] * batch_size,
        slots=[block * block_size + r % block_size for r in range(batch_size)],
        kv_indptr=list(range(0, 2 * batch_size + 1, 2)),
        last_page_len=[1] * batch_size,
        pages=[block] * (2 * batch_size),
    )


def warmup_tiles(step: PaddedDecode, shape: TileShape) -> PaddedDecode:
    """`warmup_decode`'s step with every row in one group sharing its first page, as tiles."""
    group = PrefixGroup(tuple(range(step.batch_size)), 1)
    return with_tiles(step, tile_prefixes(step.kv_indptr, step.pages, [group], shape))


def with_tiles(step: PaddedDecode, layout: TiledPages) -> PaddedDecode:
    """`step` laid out as prefix tiles (which run on the Triton kernel)."""
    return replace(step, kv_indptr=layout.kv_indptr, pages=layout.pages, tiles=layout,
                   kernel="triton")  # fmt: skip


@dataclass(frozen=True)
class _Graph:
    graph: torch.cuda.CUDAGraph
    logits: torch.Tensor  # [batch_size, vocab] float32, written by each replay


class CudaGraphRunner:
    """Model forward + logits of decode steps as CUDA graphs, one per batch size and variant
    (the decode attention: flashinfer, triton, or tiles: Triton with prefix tiles), captured on
    first use or all at once by `capture_all`.

    The graphs read static device buffers: one int32 tensor holding, for a batch size B, the
    input ids `[0, B)`, positions `[B, 2B)`, cache slots `[2B, 3B)` and page ids from `3B`, filled
    by the step's single host->device copy, plus the GraphDecodeAttention's page-table buffers
    that its plan() fills (outside the graph). All graphs share one memory pool; one runs at a time.
    `kernels` are the model's fused kernels; `decode_kernel` and `prefix_tiles` configure the
    GraphDecodeAttention (with `decode_kernel` "auto", prepare() picks flashinfer or triton per
    step: `triton_decode_wins`).
    """

    def __init__(
        self,
        model: LlamaForCausalLM,
        attention: FlashInferBackend,
        max_num_seqs: int,
        max_pages: int,
        kernels: FusedKernels | None = None,
        decode_kernel: str = "flashinfer",
        prefix_tiles: bool = False,
        programmatic: bool = False,
    ) -> None:
        self.model, self.kernels = model, kernels
        self.backend = attention
        self.sizes = graph_batch_sizes(max_num_seqs)
        self.block_size = attention.spec.block_size
        self.max_pages = max_pages
        self.attention = GraphDecodeAttention(
            attention, self.sizes[-1], max_pages + self.sizes[-1], decode_kernel, prefix_tiles,
            programmatic,
        )  # fmt: skip
        device = attention.spec.device
        self._inputs = torch.zeros(
            3 * self.sizes[-1] + self.attention.max_pages, dtype=torch.int32, device=device
        )
        self._graphs: dict[tuple[int, str], _Graph] = {}  # by (batch size, variant)
        self._pool: tuple[int, int] | None = None
        self._last_key: tuple[int, str] | None = None
        self.replays: Counter[str] = Counter()  # serving steps by variant
        self.min_tiled_bytes = MIN_SAVED_BYTES  # per layer, for a group to become prefix tiles

    @property
    def num_replays(self) -> int:
        return self.replays.total()

    @property
    def num_tiled_replays(self) -> int:
        return self.replays["tiles"]

    @property
    def variants(self) -> tuple[str, ...]:
        """The graph variants steps can take: the attention's kernels, then tiles if on."""
        return self.attention.kernels + (("tiles",) if self.attention.prefix_tiles else ())

    @property
    def captured(self) -> tuple[tuple[int, str], ...]:
        """(batch size, variant) of every captured graph, in capture order."""
        return tuple(self._graphs)

    def prepare(self, seqs: Seq[Sequence], groups: Seq[PrefixGroup] = ()) -> PaddedDecode | None:
        """The padded inputs of a decode step over `seqs`, or None if no graph can run it: too
        many sequences or pages, or (without prefix tiles) a prefix group the flashinfer backend
        would cascade. With prefix tiles, the `groups` worth it (`worth_tiling`) become tiles.
        """
        size = bucket_for(self.sizes, len(seqs))
        if size is None or sum(len(s.block_ids) for s in seqs) > self.max_pages:
            return None
        if not self.attention.prefix_tiles and self.backend.cascaded_groups(groups):
            return None
        step = pad_decode_batch(seqs, size, self.block_size)
        if step is None:
            return None
        if self.attention.prefix_tiles:
            block_bytes = self.backend.spec.block_bytes
            tiled = [g for g in groups if worth_tiling(g, block_bytes, self.min_tiled_bytes)]
            if tiled:
                shape = self.attention.prefix_shape(size)
                return with_tiles(step, tile_prefixes(step.kv_indptr, step.pages, tiled, shape))
        return replace(step, kernel=self._kernel(size, seqs))

    def _kernel(self, size: int, seqs: Seq[Sequence]) -> str:
        """The decode attention of a step without tiles: the configured one, or under "auto"
        the Triton kernel where it beats flashinfer's at this batch size and longest context."""
        kernels = self.attention.kernels
        if len(kernels) == 1:
            return kernels[0]
        longest = max(s.num_computed_tokens + 1 for s in seqs)
        return "triton" if triton_decode_wins(size, longest) else "flashinfer"

    def run(
        self, step: PaddedDecode, fill: Callable[[torch.Tensor], None] | None = None
    ) -> torch.Tensor:
        """float32 logits `[num_seqs, vocab]` of the step's last tokens (a view, valid until the
        next run); writes the step's keys and values into the KV cache. `fill(input_ids)` writes
        the input ids the host does not know yet (they are on the device)."""
        b = step.batch_size
        host = step.input_ids + step.positions + step.slots + step.pages
        copy_to_device(host, self._inputs)  # the step's one host->device copy
        ids, positions, slots = self._inputs[: 3 * b].view(3, b)  # [b] each
        if fill is not None:
            fill(ids)
        pages = self._inputs[3 * b : 3 * b + len(step.pages)]  # [num_pages]
        self.attention.plan(
            slots, step.kv_indptr, step.last_page_len, pages, step.tiles, step.kernel
        )
        key = (b, step.variant)
        if key not in self._graphs:
            self._graphs[key] = self._capture(ids, positions)
        graph = self._graphs[key]
        graph.graph.replay()
        self._last_key = key
        self.replays[step.variant] += 1
        return graph.logits[: step.num_seqs]

    def capture_all(self, block: int) -> None:
        """Capture every graph now (compiling the Triton kernels they use), not in the middle of
        serving: each batch size, largest first (the smaller graphs then fit in the memory pool
        it leaves), each of its `variants`. The warm-up steps write only `block`, which must be
        free (at engine start every block is)."""
        start = time.perf_counter()
        for size in reversed(self.sizes):
            step = warmup_decode(size, block, self.block_size)
            for kernel in self.attention.kernels:
                self.run(replace(step, kernel=kernel))
            if self.attention.prefix_tiles:
                self.run(warmup_tiles(step, self.attention.prefix_shape(size)))
        torch.cuda.synchronize()
        self.replays.clear()  # they count serving steps
        logger.info("captured %d decode CUDA graphs in %.1f s", len(self._graphs),
                    time.perf_counter() - start)  # fmt: skip

    def replay_last(self) -> tuple[int, str]:
        """Replay the last run's graph on its inputs (benchmarks time kernels); its key
        (batch size, variant)."""
        if self._last_key is None:
            raise RuntimeError("no graph has run yet")
        self._graphs[self._last_key].graph.replay()
        return self._last_key

    def _capture(self, ids: torch.Tensor, positions: torch.Tensor) -> _Graph:
        """Warm up (it writes the same k/v the replay rewrites), then capture model + logits."""
        self._forward(ids, positions)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self._forward(ids, positions)
        return _Graph(graph, logits)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.model(ids, positions, self.attention, self.kernels)  # [b, hidden]
        return self.model.compute_logits(hidden, self.kernels)  # [b, vocab] float32
