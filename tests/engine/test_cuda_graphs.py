"""The CUDA-graph runner's pure parts on CPU: batch-size buckets, padding of a decode step,
which steps prepare() gives prefix tiles, and the warm-up steps that capture every graph at start
(flashinfer faked; no graph is captured).
"""

from __future__ import annotations

import pytest

from parrotlet.engine.cuda_graphs import (
    bucket_for,
    graph_batch_sizes,
    pad_decode_batch,
    warmup_decode,
    warmup_tiles,
)
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.engine.sequence import Sequence
from parrotlet_kernels.interface import PrefixGroup


def make_decoding_seq(num_tokens: int, block_ids: list[int], first_token: int = 100) -> Sequence:
    """A sequence of `num_tokens` tokens whose last one is this step's (not yet computed)."""
    seq = Sequence("r", list(range(first_token, first_token + num_tokens)), SamplingParams(), 0)
    seq.num_computed_tokens = num_tokens - 1
    seq.block_ids = block_ids
    return seq


def test_graph_batch_sizes():
    assert graph_batch_sizes(64) == (1, 2, 4, 8, 16, 32, 48, 64)
    assert graph_batch_sizes(100) == (1, 2, 4, 8, 16, 32, 48, 64, 80, 96, 100)
    assert graph_batch_sizes(5) == (1, 2, 4, 5)
    assert graph_batch_sizes(1) == (1,)
    with pytest.raises(ValueError, match="max_num_seqs must be >= 1, got 0"):
        graph_batch_sizes(0)


def test_bucket_for():
    sizes = graph_batch_sizes(64)
    assert [bucket_for(sizes, n) for n in (1, 2, 3, 5, 8, 9, 17, 33, 48, 49, 64)] == [
        1, 2, 4, 8, 8, 16, 32, 48, 48, 64, 64,
    ]  # fmt: skip
    assert bucket_for(sizes, 65) is None


def test_pad_decode_batch_pads_into_a_free_slot():
    # block size 4: seq 0 fills its 2 blocks exactly, seq 1 has 6 tokens (block 9 half full)
    seqs = [make_decoding_seq(8, [3, 5], 10), make_decoding_seq(6, [7, 9], 50)]
    step = pad_decode_batch(seqs, batch_size=4, block_size=4)
    assert step is not None
    assert step.num_seqs == 2 and step.batch_size == 4
    assert step.input_ids == [17, 55, 0, 0]
    assert step.positions == [7, 5, 0, 0]
    # real rows: the last token's slot; padding: position 6 of seq 1, in block 9, past its end
    assert step.slots == [5 * 4 + 3, 9 * 4 + 1, 9 * 4 + 2, 9 * 4 + 2]
    assert step.kv_indptr == [0, 2, 4, 5, 6]
    assert step.pages == [3, 5, 7, 9, 3, 3]
    assert step.last_page_len == [4, 2, 1, 1]


def test_pad_decode_batch_full_bucket_needs_no_free_slot():
    seqs = [make_decoding_seq(4, [2]), make_decoding_seq(8, [0, 1])]
    step = pad_decode_batch(seqs, batch_size=2, block_size=4)
    assert step is not None
    assert step.slots == [2 * 4 + 3, 1 * 4 + 3]
    assert step.kv_indptr == [0, 1, 3]
    assert step.last_page_len == [4, 4]


def test_pad_decode_batch_without_free_slot_is_none():
    seqs = [
        make_decoding_seq(4, [2]),
        make_decoding_seq(8, [0, 1]),
        make_decoding_seq(12, [4, 5, 6]),
    ]
    assert pad_decode_batch(seqs, batch_size=4, block_size=4) is None


def test_pad_decode_batch_takes_the_next_uncomputed_token():
    seq = make_decoding_seq(7, [1, 2], 20)
    seq.num_computed_tokens = 4  # a one-token chunk of a prompt: token 4 at position 4
    step = pad_decode_batch([seq], batch_size=2, block_size=4)
    assert step is not None
    assert step.input_ids == [24, 0]
    assert step.positions == [4, 0]
    assert step.slots == [2 * 4 + 0, 2 * 4 + 1]  # padding: position 5, not yet computed
    assert step.kv_indptr == [0, 2, 3]
    assert step.pages == [1, 2, 1]
    assert step.last_page_len == [1, 1]


# ---- CudaGraphRunner.prepare: which steps get prefix tiles (flashinfer faked, no graph runs) ---
def make_runner(prefix_tiles: bool, cascade: str = "never", decode_kernel: str = "flashinfer"):
    from parrotlet.engine.cuda_graphs import CudaGraphRunner
    from parrotlet_kernels.flashinfer_backend import FlashInferBackend
    from parrotlet_kernels.flashinfer_plan import CascadePolicy

    from ..kernels.attention_helpers import make_spec
    from ..kernels.test_flashinfer_backend import FAKE_OPS

    spec = make_spec(num_heads=8, num_kv_heads=2, head_dim=16, block_size=4, num_blocks=32)
    caches = spec.allocate_kv_cache()
    backend = FlashInferBackend(spec, caches, cascade=CascadePolicy(cascade), ops=FAKE_OPS)
    model = None  # prepare() plans on the host only; it never runs the model
    return CudaGraphRunner(model, backend, max_num_seqs=8, max_pages=64,
                           decode_kernel=decode_kernel, prefix_tiles=prefix_tiles)  # fmt: skip


# seqs 0, 1, 3 share blocks 10, 11 (8 tokens); seq 2 shares nothing
SHARED_SEQS = [
    ([10, 11, 20], 10),
    ([10, 11, 21, 22], 14),
    ([30, 31], 6),
    ([10, 11, 23], 12),
]
GROUP = PrefixGroup((0, 1, 3), 2)


def test_prepare_lays_out_prefix_tiles_for_groups_worth_it():
    runner = make_runner(prefix_tiles=True)
    seqs = [make_decoding_seq(n, blocks) for blocks, n in SHARED_SEQS]
    runner.min_tiled_bytes = 2 * 2 * runner.backend.spec.block_bytes  # exactly GROUP's saving
    step = runner.prepare(seqs, [GROUP])
    assert step is not None and step.tiles is not None and step.batch_size == 4
    assert step.kv_indptr == [0, 1, 3, 5, 6]
    assert step.pages == [20, 21, 22, 30, 31, 23, 10, 11]
    shape = runner.attention.prefix_shape(4)  # GQA 4: tiles of 16 rows; 1 SM on CPU: 1 split
    assert (shape.rows_per_tile, shape.max_tiles, shape.num_splits) == (16, 3, 1)
    assert step.tiles.tile_rows == [0, 1, 3] + [-1] * 13 + [2] + [-1] * 15 + [-1] * 16
    assert step.tiles.tile_pages == [6, 2, 0, 0, 0, 0]
    runner.min_tiled_bytes += 1  # the group saves too little: the plain graph's layout
    plain = runner.prepare(seqs, [GROUP])
    assert plain is not None and plain.tiles is None
    assert plain.pages == [10, 11, 20, 10, 11, 21, 22, 30, 31, 10, 11, 23]


@pytest.mark.parametrize(("cascade", "eager"), [("always", True), ("never", False)])
def test_prepare_without_tiles_leaves_cascades_eager(cascade, eager):
    runner = make_runner(prefix_tiles=False, cascade=cascade)
    seqs = [make_decoding_seq(n, blocks) for blocks, n in SHARED_SEQS]
    step = runner.prepare(seqs, [GROUP])
    assert (step is None) == eager
    assert step is None or step.tiles is None


# ---- capture at start: warm-up steps that touch one free block ----------------------------------
def test_warmup_decode_reads_and_writes_only_its_block():
    step = warmup_decode(3, block=5, block_size=4)
    assert (step.num_seqs, step.batch_size, step.tiles) == (3, 3, None)
    assert step.input_ids == [0, 0, 0] and step.positions == [4, 4, 4]  # token 4: page 2, slot 0
    assert step.slots == [20, 21, 22]
    assert step.kv_indptr == [0, 2, 4, 6] and step.pages == [5] * 6
    assert step.last_page_len == [1, 1, 1]
    wide = warmup_decode(6, block=1, block_size=4)  # more rows than slots: they wrap
    assert wide.slots == [4, 5, 6, 7, 4, 5]


def test_warmup_tiles_share_the_first_page():
    shape = make_runner(True).attention.prefix_shape(3)
    assert (shape.rows_per_tile, shape.max_tiles) == (16, 2)
    step = warmup_tiles(warmup_decode(3, block=5, block_size=4), shape)
    assert step.tiles is not None and step.kv_indptr == step.tiles.kv_indptr == [0, 1, 2, 3]
    assert step.pages == [5, 5, 5, 5]  # each row's own page, then the shared one
    assert step.tiles.tile_rows == [0, 1, 2] + [-1] * 13 + [-1] * 16
    assert step.tiles.tile_pages == [3, 1, 0, 0]  # one tile: the prefix page at pages[3]


@pytest.mark.parametrize(
    ("decode_kernel", "prefix_tiles", "variants"),
    [
        ("flashinfer", False, ["flashinfer"]),
        ("triton", True, ["triton", "tiles"]),
        ("auto", True, ["flashinfer", "triton", "tiles"]),
    ],
)
def test_capture_all_runs_every_graph_largest_first(
    monkeypatch, decode_kernel, prefix_tiles, variants
):
    import torch

    runner = make_runner(prefix_tiles, decode_kernel=decode_kernel)
    assert list(runner.variants) == variants
    runs = []
    monkeypatch.setattr(runner, "run", lambda step: runs.append((step.batch_size, step.variant)))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    runner.replays["triton"] = 3
    runner.capture_all(block=7)
    assert runs == [(b, v) for b in (8, 4, 2, 1) for v in variants]  # max_num_seqs 8
    assert runner.num_replays == 0  # warm-up replays do not count as serving steps


# ---- graph_decode_attention "auto": the Triton kernel at short contexts -------------------------
@pytest.mark.parametrize(
    ("lengths", "kernel"),
    [
        ([16384], "triton"),  # batch 1-32: up to 16384 tokens
        ([16385], "flashinfer"),
        ([16384, 5, 40], "triton"),  # batch 4 (3 padded)
        ([16385, 5, 40], "flashinfer"),
    ],
)
def test_auto_picks_the_kernel_by_batch_and_longest_context(lengths, kernel):
    runner = make_runner(prefix_tiles=False, decode_kernel="auto")
    blocks = iter(range(10_000))
    seqs = [make_decoding_seq(n, [next(blocks) for _ in range(-(-n // 4))]) for n in lengths]
    runner.max_pages = 10_000
    step = runner.prepare(seqs)
    assert step is not None and (step.kernel, step.variant) == (kernel, kernel)


def test_tiles_take_the_triton_kernel_whatever_auto_would_pick():
    runner = make_runner(prefix_tiles=True, decode_kernel="auto")
    seqs = [make_decoding_seq(n, blocks) for blocks, n in SHARED_SEQS]
    runner.min_tiled_bytes = 0
    step = runner.prepare(seqs, [GROUP])
    assert step is not None and (step.kernel, step.variant) == ("triton", "tiles")
    fixed = make_runner(prefix_tiles=False, decode_kernel="flashinfer").prepare(seqs, [GROUP])
    assert fixed is not None and fixed.variant == "flashinfer"  # 14 tokens, but not "auto"
