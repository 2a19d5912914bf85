"""CudaGraphRunner's decode steps end to end on CPU, against the torch reference backend.

A tiny random Llama warms up every graph of the runner (capture_all), then decodes one token of
three sequences through it (prepare, the one input copy, the attention's plan, the graph of the
(batch size, variant)) and eagerly through TorchReferenceBackend, from the same KV cache; the
logits and the cache writes agree for a step of each variant "auto" picks: Triton at short
contexts, flashinfer past them (the limit lowered to 320 tokens to fit a small cache), prefix
tiles. What CPU cannot run is faked: a "graph" re-runs the model on replay, flashinfer is torch
(test_flashinfer_backend.FAKE_OPS), and the Triton kernels run under Triton's interpreter.
"""

from __future__ import annotations

import torch

from parrotlet.bench.setup import random_model
from parrotlet.engine.cuda_graphs import CudaGraphRunner, _Graph
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.engine.sequence import Sequence
from parrotlet_kernels.flashinfer_backend import FlashInferBackend
from parrotlet_kernels.interface import AttentionSpec, PrefixGroup
from parrotlet_kernels.reference import TorchReferenceBackend

from ..kernels.attention_helpers import (
    make_block_tables,
    make_metadata,
    requires_triton,
    run_under_triton_interpreter,
)

VOCAB, BLOCK, NUM_BLOCKS = 64, 16, 64
STEPS = [  # (sequence lengths with this step's token, shared prefix blocks, variant)
    ([40, 45, 50], 0, "triton"),  # batch 4 (one padding row), at most 320 tokens (check_steps)
    ([40, 45, 330], 0, "flashinfer"),
    ([40, 45, 50], 2, "tiles"),
]


class _Rerun:
    """A stand-in for a captured CUDA graph: replay() runs the model again."""

    def __init__(self, forward) -> None:
        self.replay = forward


def fake_capture(runner: CudaGraphRunner, ids: torch.Tensor, positions: torch.Tensor) -> _Graph:
    logits = runner._forward(ids, positions)
    return _Graph(_Rerun(lambda: logits.copy_(runner._forward(ids, positions))), logits)


def decoding_seq(length: int, table: list[int]) -> Sequence:
    seq = Sequence("r", [(7 * i) % VOCAB for i in range(length)], SamplingParams(), 0)
    seq.num_computed_tokens, seq.block_ids = length - 1, table
    return seq


def check_steps() -> None:
    from parrotlet.engine import cuda_graphs
    from tests.kernels.test_flashinfer_backend import FAKE_OPS

    cuda_graphs.triton_decode_wins = lambda batch, longest: longest <= 320  # fits NUM_BLOCKS
    model = random_model("tiny-random", VOCAB, torch.float16, torch.device("cpu"))
    c = model.config
    spec = AttentionSpec(c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, BLOCK,
                         NUM_BLOCKS, torch.float16, torch.device("cpu"))  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(spec.kv_cache_shape, generator=gen).half() for _ in range(c.num_layers)]
    backend = FlashInferBackend(spec, [x.clone() for x in start], ops=FAKE_OPS)
    runner = CudaGraphRunner(model, backend, max_num_seqs=4, max_pages=NUM_BLOCKS,
                             decode_kernel="auto", prefix_tiles=True)  # fmt: skip
    runner._capture = lambda ids, positions: fake_capture(runner, ids, positions)
    torch.cuda.synchronize = lambda: None  # this process only runs the check
    runner.capture_all(block=NUM_BLOCKS - 1)  # warm-up steps of every size and variant
    assert runner.captured == tuple((b, v) for b in (4, 2, 1) for v in runner.variants)
    assert runner.num_replays == 0
    runner.min_tiled_bytes = 0
    reference = TorchReferenceBackend(spec, [x.clone() for x in start])
    for lengths, shared, variant in STEPS:
        for caches in (backend.kv_caches, reference.kv_caches):
            for cache, x in zip(caches, start, strict=True):
                cache.copy_(x)
        groups = [(range(3), shared)] if shared else []
        tables = make_block_tables(gen, lengths, BLOCK, NUM_BLOCKS, groups)
        seqs = [decoding_seq(n, t) for n, t in zip(lengths, tables, strict=True)]
        prefix = [PrefixGroup((0, 1, 2), shared)] if shared else []
        step = runner.prepare(seqs, prefix)
        assert step is not None and (step.batch_size, step.variant) == (4, variant)
        got = runner.run(step).clone()  # [3, vocab]
        metadata = make_metadata([(t, n, 1) for t, n in zip(tables, lengths, strict=True)], BLOCK)
        reference.plan(metadata)
        ids = torch.tensor([s.token_ids[-1] for s in seqs])
        hidden = model(ids, torch.tensor([n - 1 for n in lengths]), reference, None)
        want = model.compute_logits(hidden, None)
        torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-2, msg=variant)
        pad_block, pad_offset = divmod(step.slots[3], BLOCK)  # the padding row's write
        for ours, theirs in zip(backend.kv_caches, reference.kv_caches, strict=True):
            written = ours.clone()
            written[pad_block, :, pad_offset] = theirs[pad_block, :, pad_offset]
            torch.testing.assert_close(written, theirs, atol=1e-2, rtol=0, msg=variant)
    assert runner.replays == {"triton": 1, "flashinfer": 1, "tiles": 1}


@requires_triton
def test_each_variant_decodes_like_the_reference_under_the_interpreter():
    code = "from tests.engine.test_cuda_graph_steps import check_steps; check_steps()"
    run_under_triton_interpreter(code)
